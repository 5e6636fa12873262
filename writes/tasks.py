"""Celery tasks of the write path: thin wrappers around ``writes.apply``.

Transient database errors are retried in place with backoff: a shard that is down keeps its writes
waiting in its queue. Other transient errors give up after a cap, and the rejected message is
dead-lettered by the queue. Each batch is counted in the worker's metrics and logged once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from celery import Task, shared_task
from django.conf import settings
from django.db import OperationalError, connections

from readmodels.tasks import request_projection
from writes.apply import ApplyResult, PublishedMessage, apply_messages, message_id
from writes.errors import ErasedMeanwhile, ForwardFailed
from writes.fates import KEEP_DAYS, PRUNE_SQL
from writes.metrics import (
    APPLY_BATCH_SIZE,
    APPLY_RETRIES,
    APPLY_SECONDS,
    DEAD_LETTERED,
    ROWS_APPLIED,
    ROWS_DIVERTED,
    ROWS_DUPLICATE,
    ROWS_REJECTED,
)
from writes.publisher import APPLY_TASK

logger = logging.getLogger(__name__)

T = TypeVar("T")

MAX_TRANSIENT_ATTEMPTS = 5
MAX_BACKOFF_SECONDS = 5.0


# Server-side codes that mean "this connection or server is going away", not "this statement failed".
_CONNECTION_SQLSTATES = {"57P01", "57P02", "57P03"}  # admin_shutdown, crash_shutdown, cannot_connect_now


def _is_connection_failure(exc: BaseException) -> bool:
    """The database could not be reached (as opposed to a statement that failed on a live connection).

    libpq reports refused, lost and closed connections without an SQLSTATE; the server uses class 08 and
    the shutdown codes. Anything else (serialization failure, deadlock, lock or statement timeout) failed
    on a live connection and counts towards the retry cap. A moved logical shard's writes that could not
    be forwarded (the broker is down) wait the same way.
    """
    if isinstance(exc, ForwardFailed):
        return True
    cause = exc.__cause__ if isinstance(exc, OperationalError) else exc
    if not isinstance(cause, psycopg.OperationalError):
        return False
    sqlstate = cause.sqlstate
    return sqlstate is None or sqlstate.startswith("08") or sqlstate in _CONNECTION_SQLSTATES


def with_shard_retries(shard: str, work: Callable[[], T], *, max_attempts: int | None = None) -> T:
    """Run ``work``, retrying transient database errors with backoff: connection failures until the
    shard answers again, others up to ``max_attempts`` (default ``MAX_TRANSIENT_ATTEMPTS``) in all."""
    cap = max_attempts or MAX_TRANSIENT_ATTEMPTS
    attempt = 0
    while True:
        try:
            return work()
        except (OperationalError, psycopg.OperationalError, ForwardFailed, ErasedMeanwhile) as exc:
            attempt += 1
            connections[shard].close()
            if not _is_connection_failure(exc) and attempt >= cap:
                logger.error("shard %s: giving up after %d attempts: %s", shard, attempt, exc, extra={"shard": shard})
                raise
            APPLY_RETRIES.labels(shard).inc()
            delay = min(MAX_BACKOFF_SECONDS, 0.1 * 2**attempt)
            logger.warning(
                "shard %s: transient error (attempt %d), retrying in %.1fs: %s",
                shard,
                attempt,
                delay,
                exc,
                extra={"shard": shard},
            )
            time.sleep(delay)


@shared_task(bind=True, name=APPLY_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def apply_batch_task(self: Task[Any, Any], shard: str, groups: list[list[Any]]) -> dict[str, int]:
    """One message, one transaction: what a worker runs when ``WRITES_APPLY_BATCHING`` is off (with it
    on, ``writes.consumer`` applies these same messages several at a time)."""
    started = time.perf_counter()
    messages = [PublishedMessage(message_id(self.request.id), groups)]
    try:
        result: ApplyResult = with_shard_retries(shard, lambda: apply_messages(shard=shard, messages=messages))
    except Exception:
        # The task fails, is rejected (not acked) and the quorum queue dead-letters the message.
        DEAD_LETTERED.labels(shard).inc()
        raise
    record_applied(shard, result, time.perf_counter() - started, groups, messages=1)
    if result.applied:
        request_projection(shard)
    return {
        "received": result.received,
        "applied": result.applied,
        "duplicates": result.duplicates,
        "rejected": result.rejected,
        "diverted": result.diverted,
    }


def record_applied(shard: str, result: ApplyResult, elapsed: float, groups: list[Any], *, messages: int) -> None:
    """Count one committed batch in the worker's metrics and log it once."""
    APPLY_SECONDS.labels(shard).observe(elapsed)
    APPLY_BATCH_SIZE.labels(shard).observe(result.received)
    ROWS_APPLIED.labels(shard).inc(result.applied)
    ROWS_DUPLICATE.labels(shard).inc(result.duplicates)
    ROWS_REJECTED.labels(shard).inc(result.rejected)
    ROWS_DIVERTED.labels(shard).inc(result.diverted)
    logger.info(
        "shard %s: applied %d of %d writes from %d message(s) in %.1f ms",
        shard,
        result.applied,
        result.received,
        messages,
        elapsed * 1000,
        extra={
            "shard": shard,
            "tenants": sorted({str(group[0]) for group in groups})[:20],
            "batch_size": result.received,
            "messages": messages,
            "applied": result.applied,
            "duplicates": result.duplicates,
            "rejected": result.rejected,
            "diverted": result.diverted,
            "duration_ms": round(elapsed * 1000, 2),
        },
    )


@shared_task(name="writes.prune_publish_fates", ignore_result=True)
def prune_publish_fates_task() -> dict[str, int]:
    """Forget fates older than ``writes.fates.KEEP_DAYS`` on every shard (beat, daily): a message is
    redelivered, if at all, long before that."""
    pruned: dict[str, int] = {}
    for shard in settings.SHARD_ALIASES:
        with connections[shard].cursor() as cursor:
            cursor.execute(PRUNE_SQL, [KEEP_DAYS])
            pruned[shard] = cursor.rowcount
    return pruned


@shared_task(name="writes.maintain_log", ignore_result=True)
def maintain_log_task() -> dict[str, dict[str, int]]:
    """The log's lifecycle on every shard (beat, hourly): partitions ahead, retention, archives."""
    from writes.lifecycle import maintain_log

    done: dict[str, dict[str, int]] = {}
    for shard in settings.SHARD_ALIASES:
        report = maintain_log(shard)
        done[shard] = {"created": len(report.created), "retired": sum(o.action != "busy" for o in report.days)}
    return done
