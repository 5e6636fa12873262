"""What both flavours of client share: options, counters, reports and the write-status shape."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict

from writes_client.buffer import Buffer
from writes_client.delivery import Dropped, RetryPolicy
from writes_client.writes import API_MAX_BATCH_ITEMS, API_MAX_BODY_BYTES, MAX_WRITE_BYTES

logger = logging.getLogger("writes_client")

OnFull = Literal["drop", "block"]
STATUS_MAX_WAIT_SECONDS = 30.0


class BufferFull(Exception):
    """The buffer had no room for a write (raised only with ``raise_errors=True``)."""


class ClientClosed(Exception):
    """A write was captured after ``close()`` (raised only with ``raise_errors=True``)."""


@dataclass(frozen=True, slots=True)
class Accepted:
    """A batch the API answered 202: its ids, when each was captured and when the answer came
    (``time.monotonic()`` values)."""

    ids: list[str]
    captured_at: list[float]
    accepted_at: float


@dataclass(frozen=True, slots=True)
class WriteStatus:
    """``GET /api/v1/writes/{id}``: pending, applied (with ``position``) or rejected (``code``, ``reason``)."""

    id: str
    status: str
    position: int | None = None
    code: str | None = None
    reason: str | None = None

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> WriteStatus:
        return cls(
            id=str(body.get("id")),
            status=str(body.get("status")),
            position=body.get("position"),
            code=body.get("code"),
            reason=body.get("reason"),
        )


@dataclass
class Stats:
    captured: int = 0  # writes taken in (given an id and queued)
    accepted: int = 0  # answered 202
    dropped: int = 0  # given up: invalid, refused, buffer full, closed (see ``on_drop``)
    requests: int = 0  # HTTP requests sent, retries included
    retries: int = 0
    buffered: int = 0  # captured and not finished yet (queued or in flight)


@dataclass(frozen=True)
class Options:
    """Every knob of a client, with its defaults. See the package README for what each does."""

    max_batch: int = 1000
    max_batch_bytes: int = 4 * 1024 * 1024
    flush_interval: float = 0.2
    max_buffered: int = 100_000
    max_buffered_bytes: int = 64 * 1024 * 1024
    on_full: OnFull = "drop"
    block_timeout: float = 10.0
    senders: int = 4
    timeout: float = 10.0
    backoff_base: float = 0.1
    backoff_cap: float = 10.0
    give_up_after: float | None = None
    gzip_min_bytes: int = 1024
    raise_errors: bool = False
    exit_timeout: float = 10.0
    on_drop: Callable[[Dropped], None] | None = None
    on_accepted: Callable[[Accepted], None] | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.max_batch <= API_MAX_BATCH_ITEMS:
            raise ValueError(f"max_batch must be 1 to {API_MAX_BATCH_ITEMS}")
        if not 1024 <= self.max_batch_bytes <= API_MAX_BODY_BYTES:
            raise ValueError(f"max_batch_bytes must be 1 KiB to {API_MAX_BODY_BYTES}")
        if self.max_buffered < 1 or self.max_buffered_bytes < MAX_WRITE_BYTES:
            raise ValueError(f"max_buffered must be >= 1 and max_buffered_bytes >= {MAX_WRITE_BYTES}")
        if self.on_full not in ("drop", "block"):
            raise ValueError("on_full must be 'drop' or 'block'")
        if self.senders < 1 or self.flush_interval < 0 or self.timeout <= 0:
            raise ValueError("senders must be >= 1, flush_interval >= 0 and timeout > 0")

    def buffer(self) -> Buffer:
        return Buffer(
            max_batch=self.max_batch,
            max_batch_bytes=self.max_batch_bytes,
            flush_interval=self.flush_interval,
            max_writes=self.max_buffered,
            max_bytes=self.max_buffered_bytes,
        )

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(self.backoff_base, self.backoff_cap, self.give_up_after)


class OptionArgs(TypedDict, total=False):
    """``Options``' fields as keyword arguments of the clients."""

    max_batch: int
    max_batch_bytes: int
    flush_interval: float
    max_buffered: int
    max_buffered_bytes: int
    on_full: OnFull
    block_timeout: float
    senders: int
    timeout: float
    backoff_base: float
    backoff_cap: float
    give_up_after: float | None
    gzip_min_bytes: int
    raise_errors: bool
    exit_timeout: float
    on_drop: Callable[[Dropped], None] | None
    on_accepted: Callable[[Accepted], None] | None


@dataclass
class Reporter:
    """Calls the user's hooks (never letting them break the client) and logs drops, at most every 10 s."""

    options: Options
    rng: random.Random = field(default_factory=random.Random)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _unlogged: dict[str, int] = field(default_factory=dict)
    _logged_at: float = float("-inf")

    def dropped(self, report: Dropped) -> None:
        if self.options.on_drop is not None:
            try:
                self.options.on_drop(report)
            except Exception:
                logger.exception("on_drop raised")
        with self._lock:
            self._unlogged[report.reason] = self._unlogged.get(report.reason, 0) + len(report.ids)
            now = time.monotonic()
            if now - self._logged_at < 10:
                return
            counts, self._unlogged, self._logged_at = self._unlogged, {}, now
        logger.warning(
            "writes dropped (not accepted, not sent again): %s; last: %s %s",
            ", ".join(f"{n} {reason}" for reason, n in counts.items()),
            report.status or "",
            str(report.detail or "")[:300],
        )

    def accepted(self, report: Accepted) -> None:
        if self.options.on_accepted is not None:
            try:
                self.options.on_accepted(report)
            except Exception:
                logger.exception("on_accepted raised")


def base_headers(api_key: str) -> dict[str, str]:
    from writes_client import __version__

    return {"authorization": f"Bearer {api_key}", "user-agent": f"writes-client/{__version__}"}


def status_path(write_id: str, wait: float) -> str:
    return f"/api/v1/writes/{write_id}?wait={min(STATUS_MAX_WAIT_SECONDS, max(0.0, wait)):.3f}"
