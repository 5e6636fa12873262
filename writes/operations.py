"""What operators watch, per physical shard: queue depth, recent apply rate, time to drain, the log's
last position, dead letters and each projection's lag; for the operations page, ``writes_status`` and
the scrape-time metrics.

Every figure is read from the system itself (RabbitMQ's queue counts, the shards' logs), not from one
process's memory, so every API process, the page and the command agree. Projection lag and repair
runs come from the sources listed in ``settings.WRITES_PROJECTION_STATUS_SOURCES`` (the read side
registers one), each a function ``(shard) -> list[ProjectionStatus]``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.db import connections
from django.utils.module_loading import import_string
from kombu import Connection
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from writes.models import ShardMap
from writes.queues import dead_letter_queue, queue_name
from writes.topology import ServerRole, broker_node_roles, shard_server_roles

logger = logging.getLogger(__name__)

# The apply rate is measured over the last minute of the log, reading at most this many of its newest
# rows (a backward scan of the primary key): cheap at any size, and above that many rows a minute the
# rate is taken over the shorter span those rows cover.
RATE_WINDOW_SECONDS = 60
RATE_SAMPLE_ROWS = 50_000
MIN_RATE_SPAN_SECONDS = 5.0
# Messages waiting and nothing applied for this long: the queue is stalled, whatever the minute's rate.
STALL_SECONDS = 15.0
# Several scrapers and open pages within this many seconds share one reading.
CACHE_SECONDS = 2.0

_RATE_SQL = """
SELECT count(*), count(DISTINCT applied_at), min(applied_at)
FROM (SELECT applied_at FROM write_log ORDER BY position DESC LIMIT %s) AS recent
WHERE applied_at > now() - make_interval(secs => %s)
"""
_LAST_SQL = "SELECT position, applied_at FROM write_log ORDER BY position DESC LIMIT 1"


@dataclass(frozen=True, slots=True)
class ProjectionStatus:
    """One projection on one shard, as its read side reports it."""

    shard: str
    projection: str
    lag_positions: int
    lag_seconds: float | None = None
    checkpoint: int | None = None  # the log position the projection has read up to
    last_repair_at: datetime | None = None
    last_repair_drift: int | None = None


ProjectionStatusSource = Callable[[str], list[ProjectionStatus]]


@dataclass(frozen=True, slots=True)
class QueueCounts:
    ready: int
    consumers: int


@dataclass(slots=True)
class ShardStatus:
    shard: str
    queue: str
    logical_shards: int
    queue_depth: int | None = None  # ready messages; None when the broker cannot be asked
    consumers: int | None = None
    rows_per_second: float | None = None  # None when the shard cannot be read
    batches_per_second: float | None = None
    last_position: int | None = None
    last_applied_at: datetime | None = None
    idle_seconds: float | None = None  # since the newest row was applied
    projections: list[ProjectionStatus] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def seconds_to_drain(self) -> float | None:
        """Queue depth ÷ recent apply rate (both in messages); infinite when nothing is being applied."""
        if self.queue_depth is None or self.batches_per_second is None:
            return None
        if self.queue_depth == 0:
            return 0.0
        if self.batches_per_second <= 0 or self.idle_seconds is None or self.idle_seconds > STALL_SECONDS:
            return math.inf
        return self.queue_depth / self.batches_per_second


@dataclass(frozen=True, slots=True)
class Overview:
    shards: list[ShardStatus]
    dead_letters: int | None
    generated_at: datetime
    #: Each broker node (up, unreachable) and each shard's servers (primary, standby, unreachable).
    broker_nodes: list[ServerRole] = field(default_factory=list)
    shard_servers: dict[str, list[ServerRole]] = field(default_factory=dict)


def queue_counts(names: list[str]) -> dict[str, QueueCounts | None]:
    """Ready messages and consumers per queue, by a passive declare (``None``: missing or unreachable)."""
    counts: dict[str, QueueCounts | None] = dict.fromkeys(names)
    try:
        with Connection(settings.CELERY_BROKER_URL, connect_timeout=2) as connection:
            connection.connect()
            for name in names:
                channel: Any = connection.channel()
                try:
                    _, ready, consumers = channel.queue_declare(queue=name, passive=True)
                    counts[name] = QueueCounts(ready=int(ready), consumers=int(consumers))
                except Exception:  # a missing queue closes the channel: count it as unknown, go on
                    logger.debug("queue %s could not be inspected", name, exc_info=True)
                finally:
                    try:
                        channel.close()
                    except Exception:
                        logger.debug("closing an inspection channel failed", exc_info=True)
    except Exception as exc:
        logger.warning("broker unreachable for queue counts: %s", exc.__class__.__name__)
    return counts


def read_log_figures(status: ShardStatus) -> None:
    """Fill the apply rate and last position of one shard from its write log."""
    try:
        with connections[status.shard].cursor() as cursor:
            cursor.execute(_RATE_SQL, [RATE_SAMPLE_ROWS, RATE_WINDOW_SECONDS])
            rows, batches, oldest = cursor.fetchone()
            cursor.execute("SELECT now()")
            (now,) = cursor.fetchone()
            # Over the time the recent rows actually cover (at least MIN_RATE_SPAN_SECONDS), so a burst
            # that began ten seconds ago is not averaged over a whole minute.
            span = float(RATE_WINDOW_SECONDS)
            if oldest is not None:
                span = min(span, max((now - oldest).total_seconds(), MIN_RATE_SPAN_SECONDS))
            # One apply transaction stamps all its rows with one applied_at: distinct stamps ≈ messages.
            status.rows_per_second = rows / span
            status.batches_per_second = batches / span
            cursor.execute(_LAST_SQL)
            last = cursor.fetchone()
            if last is not None:
                status.last_position, status.last_applied_at = last
                status.idle_seconds = max(0.0, (now - last[1]).total_seconds())
    except Exception as exc:
        status.problems.append(f"shard database unavailable ({exc.__class__.__name__})")
        connections[status.shard].close()


_BUSIEST_SQL = """
SELECT get_byte(sha256(uuid_send(tenant_id)), 7) AS logical_shard, count(*) AS writes
FROM write_log
WHERE applied_at > now() - make_interval(secs => %s)
GROUP BY 1 ORDER BY 2 DESC LIMIT %s
"""


def busiest_logical_shards(shard: str, *, seconds: int = 3600, limit: int = 10) -> list[tuple[int, int]]:
    """(logical shard, writes applied) on ``shard`` over the last ``seconds``: what to move first.

    A full scan of that period of the log (the log has no index on ``applied_at``): an operator's query.
    """
    with connections[shard].cursor() as cursor:
        cursor.execute(_BUSIEST_SQL, [seconds, limit])
        return [(int(logical), int(writes)) for logical, writes in cursor.fetchall()]


def projection_statuses(shard: str) -> list[ProjectionStatus]:
    """Every registered source's rows for this shard; a failing source is logged, not fatal."""
    found: list[ProjectionStatus] = []
    for path in settings.WRITES_PROJECTION_STATUS_SOURCES:
        try:
            source: ProjectionStatusSource = import_string(path)
            found.extend(source(shard))
        except Exception:
            logger.exception("projection status source %s failed", path, extra={"shard": shard})
    return found


def collect_overview() -> Overview:
    per_shard_logical: dict[str, int] = {}
    try:
        for alias in ShardMap.objects.values_list("alias", flat=True):
            per_shard_logical[alias] = per_shard_logical.get(alias, 0) + 1
    except Exception:
        logger.warning("control database unavailable for the shard map")
    statuses = [
        ShardStatus(shard=alias, queue=queue_name(alias), logical_shards=per_shard_logical.get(alias, 0))
        for alias in settings.SHARD_ALIASES
    ]
    dead_letter_name = dead_letter_queue().name
    counts = queue_counts([*(s.queue for s in statuses), dead_letter_name])
    for status in statuses:
        queue = counts[status.queue]
        if queue is None:
            status.problems.append("queue not found or broker unavailable")
        else:
            status.queue_depth, status.consumers = queue.ready, queue.consumers
            if queue.consumers == 0:
                status.problems.append("no worker consumes this queue")
        read_log_figures(status)
        status.projections = projection_statuses(status.shard)
    dead = counts[dead_letter_name]
    return Overview(
        shards=statuses,
        dead_letters=dead.ready if dead else None,
        generated_at=datetime.now(UTC),
        broker_nodes=broker_node_roles(),
        shard_servers={alias: shard_server_roles(alias) for alias in settings.SHARD_ALIASES},
    )


_cache_lock = threading.Lock()
_cached: tuple[float, Overview] | None = None


def overview() -> Overview:
    """The current overview, shared by callers within ``CACHE_SECONDS``."""
    global _cached
    with _cache_lock:
        if _cached is not None and time.monotonic() - _cached[0] < CACHE_SECONDS:
            return _cached[1]
        result = collect_overview()
        _cached = (time.monotonic(), result)
        return result


def forget_cached_overview() -> None:
    global _cached
    with _cache_lock:
        _cached = None


def overview_as_dict(view: Overview) -> dict[str, Any]:
    def number(value: float | None) -> float | None:
        return None if value is None or math.isinf(value) else round(value, 3)

    return {
        "generated_at": view.generated_at.isoformat(),
        "dead_letters": view.dead_letters,
        "broker_nodes": [{"node": r.server, "role": r.role} for r in view.broker_nodes],
        "shard_servers": {
            alias: [{"server": r.server, "role": r.role} for r in roles] for alias, roles in view.shard_servers.items()
        },
        "shards": [
            {
                "shard": s.shard,
                "queue": s.queue,
                "logical_shards": s.logical_shards,
                "queue_depth": s.queue_depth,
                "consumers": s.consumers,
                "rows_per_second": number(s.rows_per_second),
                "batches_per_second": number(s.batches_per_second),
                "seconds_to_drain": number(s.seconds_to_drain),
                "stalled": s.seconds_to_drain is not None and math.isinf(s.seconds_to_drain),
                "last_position": s.last_position,
                "last_applied_at": s.last_applied_at.isoformat() if s.last_applied_at else None,
                "projections": [
                    {
                        "projection": p.projection,
                        "checkpoint": p.checkpoint,
                        "lag_positions": p.lag_positions,
                        "lag_seconds": number(p.lag_seconds),
                        "last_repair_at": p.last_repair_at.isoformat() if p.last_repair_at else None,
                        "last_repair_drift": p.last_repair_drift,
                    }
                    for p in s.projections
                ],
                "problems": s.problems,
            }
            for s in view.shards
        ],
    }


class OperationsCollector(Collector):
    """Scrape-time gauges: queue depth, apply rate, time to drain, last position, projection lag."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        view = overview()
        depth = GaugeMetricFamily("writes_queue_depth", "Ready messages in the shard's write queue.", labels=["shard"])
        consumers = GaugeMetricFamily(
            "writes_queue_consumers", "Consumers of the shard's write queue.", labels=["shard"]
        )
        rate = GaugeMetricFamily(
            "writes_apply_rate_rows_per_second", "Rows appended per second over the last minute.", labels=["shard"]
        )
        batch_rate = GaugeMetricFamily(
            "writes_apply_rate_batches_per_second",
            "Messages applied per second over the last minute.",
            labels=["shard"],
        )
        drain = GaugeMetricFamily(
            "writes_queue_seconds_to_drain",
            "Queue depth ÷ recent apply rate; +Inf when messages wait and none are being applied.",
            labels=["shard"],
        )
        position = GaugeMetricFamily(
            "writes_log_last_position", "Newest position in the shard's write log.", labels=["shard"]
        )
        lag = GaugeMetricFamily(
            "writes_projection_lag_positions", "Log positions not yet projected.", labels=["shard", "projection"]
        )
        lag_seconds = GaugeMetricFamily(
            "writes_projection_lag_seconds", "Age of the oldest unprojected write.", labels=["shard", "projection"]
        )
        drift = GaugeMetricFamily(
            "writes_repair_last_drift_rows", "Rows the last repair run found wrong.", labels=["shard", "projection"]
        )
        for s in view.shards:
            if s.queue_depth is not None:
                depth.add_metric([s.shard], s.queue_depth)
                consumers.add_metric([s.shard], s.consumers or 0)
            if s.rows_per_second is not None and s.batches_per_second is not None:
                rate.add_metric([s.shard], s.rows_per_second)
                batch_rate.add_metric([s.shard], s.batches_per_second)
            if s.seconds_to_drain is not None:
                drain.add_metric([s.shard], s.seconds_to_drain)
            if s.last_position is not None:
                position.add_metric([s.shard], s.last_position)
            for p in s.projections:
                lag.add_metric([s.shard, p.projection], p.lag_positions)
                if p.lag_seconds is not None:
                    lag_seconds.add_metric([s.shard, p.projection], p.lag_seconds)
                if p.last_repair_drift is not None:
                    drift.add_metric([s.shard, p.projection], p.last_repair_drift)
        yield from (depth, consumers, rate, batch_rate, drain, position, lag, lag_seconds, drift)
        if view.dead_letters is not None:
            yield GaugeMetricFamily(
                "writes_dead_letter_depth", "Messages parked in the dead-letter queue.", value=view.dead_letters
            )
