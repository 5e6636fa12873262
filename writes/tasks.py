"""Celery tasks of the write path: thin wrappers around ``writes.apply``.

Transient database errors are retried in place with backoff: a shard that is down keeps its writes
waiting in its queue. Other transient errors give up after a cap, and the rejected message is
dead-lettered by the queue.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from celery import shared_task
from django.db import OperationalError, connections

from writes.apply import ApplyResult, apply_batch
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
    on a live connection and counts towards the retry cap.
    """
    cause = exc.__cause__ if isinstance(exc, OperationalError) else exc
    if not isinstance(cause, psycopg.OperationalError):
        return False
    sqlstate = cause.sqlstate
    return sqlstate is None or sqlstate.startswith("08") or sqlstate in _CONNECTION_SQLSTATES


def with_shard_retries(shard: str, work: Callable[[], T]) -> T:
    attempt = 0
    while True:
        try:
            return work()
        except (OperationalError, psycopg.OperationalError) as exc:
            attempt += 1
            connections[shard].close()
            if not _is_connection_failure(exc) and attempt >= MAX_TRANSIENT_ATTEMPTS:
                logger.error("shard %s: giving up after %d attempts: %s", shard, attempt, exc)
                raise
            delay = min(MAX_BACKOFF_SECONDS, 0.1 * 2**attempt)
            logger.warning("shard %s: transient error (attempt %d), retrying in %.1fs: %s", shard, attempt, delay, exc)
            time.sleep(delay)


@shared_task(name=APPLY_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def apply_batch_task(shard: str, groups: list[list[Any]]) -> dict[str, int]:
    result: ApplyResult = with_shard_retries(shard, lambda: apply_batch(shard=shard, groups=groups))
    return {
        "received": result.received,
        "applied": result.applied,
        "duplicates": result.duplicates,
        "rejected": result.rejected,
    }
