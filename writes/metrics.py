"""Prometheus metrics of the write path: the API's (requests, accept and confirm latency, writes per
message) and the workers' (batch size, apply duration, rows applied/rejected, retries, dead letters).

Both run under several processes (gunicorn workers, Celery prefork children), so metrics use
prometheus-client's multiprocess mode whenever ``PROMETHEUS_MULTIPROC_DIR`` is set: each process writes
its values to files in that directory and one exposition merges them. Without the variable (tests,
``runserver``) the process's own registry is exposed. Figures that belong to the system rather than to
a process (queue depth, time to drain, projection lag) are computed at scrape time by
``writes.operations.OperationsCollector``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)

logger = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Latency buckets from a millisecond (a confirm on an idle broker) to the 1.5 s publish timeout and past it.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.5, 5.0, 10.0)
# Writes per message / per batch: from a single write to the 10,000-write publish cap and beyond.
SIZE_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000)

# --- API processes ---------------------------------------------------------------------------
HTTP_REQUESTS = Counter(
    "writes_http_requests",
    "HTTP requests answered, by endpoint (URL name), method and status.",
    ["endpoint", "method", "status"],
)
HTTP_REFUSED = Counter(
    "writes_http_refused",
    "Requests refused for load (429 rate limited, 503 broker or queue), by status and code.",
    ["status", "code"],
)
ACCEPT_SECONDS = Histogram(
    "writes_accept_seconds",
    "Time to accept one write request: validate, publish, broker confirm.",
    ["kind"],
    buckets=LATENCY_BUCKETS,
)
WRITES_ACCEPTED = Counter("writes_accepted", "Writes answered 202 (durable in RabbitMQ), by kind.", ["kind"])
PUBLISH_CONFIRM_SECONDS = Histogram(
    "writes_publish_confirm_seconds",
    "Publish of one coalesced message until the broker's confirm.",
    buckets=LATENCY_BUCKETS,
)
WRITES_PER_MESSAGE = Histogram(
    "writes_publish_writes_per_message", "Writes carried by one published (confirmed) message.", buckets=SIZE_BUCKETS
)

# --- Worker processes -------------------------------------------------------------------------
APPLY_BATCH_SIZE = Histogram("writes_apply_batch_size", "Writes per applied message.", ["shard"], buckets=SIZE_BUCKETS)
APPLY_SECONDS = Histogram(
    "writes_apply_seconds",
    "Duration of one batch's apply transaction, retries included.",
    ["shard"],
    buckets=LATENCY_BUCKETS,
)
ROWS_APPLIED = Counter("writes_rows_applied", "Rows appended to a shard's write log.", ["shard"])
ROWS_DUPLICATE = Counter("writes_rows_duplicate", "Writes ignored because their id was already applied.", ["shard"])
ROWS_REJECTED = Counter("writes_rows_rejected", "Writes recorded in rejected_writes (bad data).", ["shard"])
ROWS_DIVERTED = Counter(
    "writes_rows_diverted",
    "Writes that reached a shard their logical shard had left, forwarded to its new home.",
    ["shard"],
)
APPLY_RETRIES = Counter("writes_apply_retries", "Transient database errors retried in place.", ["shard"])
DEAD_LETTERED = Counter(
    "writes_apply_dead_lettered", "Messages given up on and rejected to the dead-letter queue.", ["shard"]
)


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def process_registry() -> CollectorRegistry:
    """Every process's metrics merged (multiprocess mode), or this process's own."""
    path = multiprocess_dir()
    if path is None:
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
    return registry


def exposition() -> bytes:
    return generate_latest(process_registry())


def reset_multiprocess_dir(path: str) -> None:
    """Drop files of earlier processes: a previous run's counts would add to this run's.

    This process's own files stay: its metrics were created when their modules were imported.
    """
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    own = f"_{os.getpid()}.db"
    for stale in directory.glob("*.db"):
        if not stale.name.endswith(own):
            stale.unlink(missing_ok=True)


def mark_process_dead(pid: int) -> None:
    path = multiprocess_dir()
    if path is not None:
        multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]


def start_worker_exporter(port: int, addr: str) -> None:
    """Serve the worker node's merged metrics (main process and every pool child) on its own port."""
    path = multiprocess_dir()
    if path is None:
        raise RuntimeError(f"{MULTIPROC_ENV} must be set before the worker starts to export pool metrics.")
    reset_multiprocess_dir(path)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
    start_http_server(port, addr=addr, registry=registry)
    logger.info("worker metrics on http://%s:%d/metrics", addr, port, extra={"metrics_dir": path})
