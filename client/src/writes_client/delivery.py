"""Delivering one batch: the body on the wire, and what each answer means. No I/O here.

Both flavours of client drive a ``Delivery`` the same way: send ``request()``, feed the answer to
``answered`` (or the failure to ``failed``), wait the delay it returns, repeat until ``request()`` is
None. Every attempt sends the same bytes, ids included: a retry can only repeat a write, never add one.

- 2xx: accepted.
- 429, 503, 502, 504 and connection failures or timeouts: retried after an exponential backoff with
  jitter, never sooner than ``Retry-After``; the API never applies a write it answered with an error,
  and applies a repeated id at most once, so a retry is exactly-once-safe whatever happened before.
- 400 ``invalid`` naming items by index: those items are given up, the rest is sent again at once
  (the API accepts a batch whole or not at all).
- 413: the batch is halved and each half sent; a single write still too large is given up.
- anything else (401, 403, 404, 415, another 400, 500): given up and reported.
"""

from __future__ import annotations

import gzip
import json
import random
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from writes_client.buffer import Batch
from writes_client.writes import Item

RETRIED_STATUSES = frozenset({429, 502, 503, 504})
MAX_RETRY_AFTER_SECONDS = 300.0


@dataclass(frozen=True, slots=True)
class Dropped:
    """Writes the client gave up on: they were not accepted and will not be sent again."""

    reason: str  # invalid | refused | too_large | gave_up | buffer_full | closed
    ids: list[str]
    status: int | None = None  # the HTTP status that made the client give up, if any
    detail: Any = None  # the API's error object, or a description


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    backoff_base: float = 0.1
    backoff_cap: float = 10.0
    give_up_after: float | None = None  # seconds from a batch's first attempt; None: until closed

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        """ "Equal jitter": half the exponential step fixed, half random; at least ``Retry-After``,
        plus a little jitter so that clients told the same ``Retry-After`` do not return together."""
        step = min(self.backoff_cap, self.backoff_base * 2.0**attempt)
        backoff = step / 2 + rng.uniform(0, step / 2)
        if retry_after is None:
            return backoff
        return max(backoff, retry_after + rng.uniform(0, min(step, retry_after) / 2))


@dataclass(slots=True)
class Delivery:
    batch: Batch
    policy: RetryPolicy
    started: float
    gzip_min_bytes: int = 1024
    rng: random.Random = field(default_factory=random.Random)
    accepted: list[Item] = field(default_factory=list)
    dropped: list[Dropped] = field(default_factory=list)
    attempts: int = 0  # requests sent for this batch
    retries: int = 0
    _parts: deque[list[Item]] = field(default_factory=deque)
    _attempt: int = 0  # retries of the current part
    _body: tuple[bytes, dict[str, str]] | None = None

    def __post_init__(self) -> None:
        self._parts.append(list(self.batch.items))

    @property
    def path(self) -> str:
        return self.batch.destination.path

    def request(self) -> tuple[bytes, dict[str, str]] | None:
        """The next body and its headers, or None when every write is accepted or given up."""
        if not self._parts:
            return None
        if self._body is None:
            self._body = encode_batch(self._parts[0], gzip_min_bytes=self.gzip_min_bytes)
        self.attempts += 1
        return self._body

    def answered(self, status: int, headers: Mapping[str, str], content: bytes, now: float) -> float:
        """Seconds to wait before the next request."""
        part = self._parts[0]
        if 200 <= status < 300:
            self.accepted.extend(part)
            return self._next_part()
        if status in RETRIED_STATUSES:
            return self._retry(now, retry_after(headers.get("retry-after")), f"HTTP {status}", status)
        error = _error_of(content)
        if status == 413 and len(part) > 1:
            half = len(part) // 2
            self._parts.popleft()
            self._parts.extendleft([part[half:], part[:half]])
            self._new_part()
            return 0.0
        if status == 413:
            return self._give_up("too_large", status, error)
        bad = _bad_indexes(error, len(part)) if status == 400 else None
        if bad:
            self.dropped.append(Dropped("invalid", [part[i].id for i in sorted(bad)], status, error))
            rest = [item for i, item in enumerate(part) if i not in bad]
            if not rest:
                return self._next_part()
            self._parts[0] = rest
            self._new_part()
            return 0.0
        return self._give_up("refused", status, error)

    def failed(self, description: str, now: float) -> float:
        """The request got no answer (refused, reset, timed out): it may or may not have been accepted."""
        return self._retry(now, None, description, None)

    def abandon(self, reason: str) -> None:
        """Give up every write not accepted yet (the client is closing)."""
        ids = [item.id for part in self._parts for item in part]
        if ids:
            self.dropped.append(Dropped(reason, ids))
        self._parts.clear()

    def _retry(self, now: float, after: float | None, description: str, status: int | None) -> float:
        delay = self.policy.delay(self._attempt, after, self.rng)
        limit = self.policy.give_up_after
        if limit is not None and now + delay - self.started > limit:
            return self._give_up("gave_up", status, f"{description}; still failing after {limit}s")
        self._attempt += 1
        self.retries += 1
        return delay

    def _give_up(self, reason: str, status: int | None, detail: Any) -> float:
        self.dropped.append(Dropped(reason, [item.id for item in self._parts[0]], status, detail))
        return self._next_part()

    def _next_part(self) -> float:
        self._parts.popleft()
        self._new_part()
        return 0.0

    def _new_part(self) -> None:
        self._body = None
        self._attempt = 0


def encode_batch(items: list[Item], *, gzip_min_bytes: int) -> tuple[bytes, dict[str, str]]:
    """Always the batch form, even for one write: a 400 then names items by index in this list."""
    body = b'{"batch":[' + b",".join(item.data for item in items) + b"]}"
    headers = {"content-type": "application/json"}
    if len(body) >= gzip_min_bytes:
        # Level 1: most of the gain (JSON shrinks 5-10x) for a fraction of level 9's time.
        body = gzip.compress(body, compresslevel=1, mtime=0)
        headers["content-encoding"] = "gzip"
    return body, headers


def retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds (the API sends whole seconds; an HTTP date is not expected)."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    if seconds != seconds or seconds < 0:  # NaN or negative
        return None
    return min(seconds, MAX_RETRY_AFTER_SECONDS)


def _error_of(content: bytes) -> Any:
    try:
        return json.loads(content).get("error")
    except (ValueError, AttributeError):
        return content[:500].decode("utf-8", "replace")


def _bad_indexes(error: Any, size: int) -> set[int] | None:
    """The items a ``400 invalid`` names, if it names items only (not the body as a whole)."""
    if not isinstance(error, dict) or error.get("code") != "invalid":
        return None
    details = error.get("details")
    if not isinstance(details, list) or not details:
        return None
    indexes = set()
    for detail in details:
        index = detail.get("index") if isinstance(detail, dict) else None
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < size:
            return None
        indexes.add(index)
    return indexes
