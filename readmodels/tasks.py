"""Celery tasks of the read side: the projector (after applied batches, debounced, and from beat) and
repair (from beat)."""

from __future__ import annotations

import logging
import threading
import time

from celery import current_app, shared_task
from django.conf import settings
from django.db import OperationalError, connections

from readmodels.projector import project_shard
from readmodels.repair import repair_shard

logger = logging.getLogger(__name__)

PROJECT_TASK = "readmodels.project_shard"
REPAIR_TASK = "readmodels.repair_shard"
# At most one trigger per shard per this many seconds and process. A batch applied inside the window
# gets a trigger delayed to the window's end (trailing edge), so every applied batch is followed by a
# projector run that starts after its commit; beat's ``project_all`` is only the safety net.
TRIGGER_INTERVAL_SECONDS = 0.1

# shard → when the latest trigger sent (or scheduled) by this process runs.
_next_run: dict[str, float] = {}
_trigger_lock = threading.Lock()


def request_projection(shard: str) -> None:
    """Ask for a projector run on ``shard`` that starts after now: at once, or at the end of the
    current debounce window if one was already asked for."""
    now = time.monotonic()
    with _trigger_lock:
        scheduled = _next_run.get(shard, -TRIGGER_INTERVAL_SECONDS)
        if scheduled >= now:
            return  # a run not started yet will see this batch
        # The trailing run: one interval after the last one, or now if that is already past.
        run_at = max(now, scheduled + TRIGGER_INTERVAL_SECONDS)
        _next_run[shard] = run_at
    delay = run_at - now
    if delay <= 0:
        _send_projection_task(shard, now)
        return
    # The trailing trigger waits here, not in the broker: a ``countdown`` to our direct exchange on
    # quorum queues is not native delayed delivery (Celery warns, and the worker holding the ETA task
    # may block). If this process dies before the timer fires, beat's ``project_all`` catches up.
    timer = threading.Timer(delay, _send_projection_task, args=(shard, now))
    timer.daemon = True
    timer.start()


def _send_projection_task(shard: str, asked_at: float) -> None:
    try:
        current_app.send_task(PROJECT_TASK, args=[shard], ignore_result=True)
    except Exception:  # the batch is applied; failing its task now would only redeliver it. Beat catches up.
        logger.warning("shard %s: could not trigger the projector; beat will", shard, exc_info=True)
        with _trigger_lock:
            _next_run[shard] = asked_at - TRIGGER_INTERVAL_SECONDS


@shared_task(name=PROJECT_TASK, ignore_result=True)
def project_shard_task(shard: str) -> int:
    try:
        return project_shard(shard)
    except OperationalError:
        # A worker reuses its connections across tasks (CELERY_DB_REUSE_MAX), and Django does not reopen
        # one whose server went away: every later run on this shard would fail on the dead connection,
        # even once a promoted standby serves the shard. Close it, and run once more on a fresh one.
        connections[shard].close()
        return project_shard(shard)


@shared_task(name="readmodels.project_all", ignore_result=True)
def project_all_task() -> None:
    """Beat's safety net: a projector run for every shard."""
    for shard in settings.SHARD_ALIASES:
        current_app.send_task(PROJECT_TASK, args=[shard], ignore_result=True)


@shared_task(name=REPAIR_TASK, ignore_result=True)
def repair_shard_task(shard: str) -> dict[str, int]:
    """Repair every projection of one shard over the configured recent window."""
    outcomes = repair_shard(shard=shard)
    return {
        "drift_found": sum(o.drift_found for o in outcomes),
        "drift_fixed": sum(o.drift_fixed for o in outcomes),
    }


@shared_task(name="readmodels.repair_all", ignore_result=True)
def repair_all_task() -> None:
    """Beat: one repair task per shard, so shards are repaired in parallel by whoever is free."""
    for shard in settings.SHARD_ALIASES:
        current_app.send_task(REPAIR_TASK, args=[shard], ignore_result=True)
