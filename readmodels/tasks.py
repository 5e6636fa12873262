"""Celery tasks of the read side: the projector (after applied batches, debounced, and from beat) and
repair (from beat)."""

from __future__ import annotations

import threading
import time

from celery import current_app, shared_task
from django.conf import settings

from readmodels.projector import project_shard
from readmodels.repair import repair_shard

PROJECT_TASK = "readmodels.project_shard"
REPAIR_TASK = "readmodels.repair_shard"
# One trigger per shard per this many seconds and process; the projector it starts runs until the log
# is drained, and beat's ``project_all`` catches any tail a skipped trigger left.
TRIGGER_INTERVAL_SECONDS = 0.25

_last_trigger: dict[str, float] = {}
_trigger_lock = threading.Lock()


def request_projection(shard: str) -> None:
    """Ask for a projector run on ``shard`` soon, unless this process asked very recently."""
    now = time.monotonic()
    with _trigger_lock:
        if now - _last_trigger.get(shard, 0.0) < TRIGGER_INTERVAL_SECONDS:
            return
        _last_trigger[shard] = now
    current_app.send_task(PROJECT_TASK, args=[shard], ignore_result=True)


@shared_task(name=PROJECT_TASK, ignore_result=True)
def project_shard_task(shard: str) -> int:
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
