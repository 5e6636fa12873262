"""Repair: recompute a projection's recent window from the log, compare it with the read model, fix
every difference, and record a ``RepairRun``. Safe while writes and the projector keep going.

How (for any projection implementing ``SupportsRepair``, see ``readmodels.projections.base``):

1. A session advisory lock per (projection, shard) keeps repairs and rebuilds of it from overlapping;
   a second one is skipped and recorded as such.
2. One REPEATABLE READ, read-only transaction reads the checkpoint C and, in the same snapshot,
   recomputes the window from the log rows at positions ``<= C`` and reads the stored rows. The
   projector commits read-model rows and checkpoint together, so that snapshot's rows should equal
   exactly what the log up to C implies: any difference is drift. Gap safety guarantees no row below
   C commits later. The projector is not blocked meanwhile.
3. A short READ COMMITTED transaction holds the checkpoint row (pausing the projector for this
   projection) and applies the fixes as deltas, which commute with whatever the projector added above
   C in between; the repair run is recorded in that same transaction.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import connections, transaction
from django.utils import timezone

from readmodels.models import RepairRun
from readmodels.projections import PROJECTIONS, Projection, repair_support
from readmodels.projector import lock_checkpoint
from writes.lifecycle import horizon_number
from writes.partitions import EPOCH

logger = logging.getLogger(__name__)

# First half of the two-key advisory lock; the second is a hash of the projection's name.
MAINTENANCE_LOCK_CLASS = 0x524D  # "RM"


@dataclass(frozen=True, slots=True)
class RepairOutcome:
    projection: str
    shard: str
    outcome: str
    since: datetime | None
    checkpoint: int | None
    rows_checked: int
    drift_found: int
    drift_fixed: int
    duration_seconds: float
    message: str = ""


def default_since() -> datetime:
    return timezone.now() - timedelta(hours=settings.READMODELS_REPAIR_WINDOW_HOURS)


def _lock_key(name: str) -> int:
    # Signed 32-bit, as pg_advisory_lock(int, int) wants.
    return zlib.crc32(name.encode()) - 2**31


@contextmanager
def maintenance_lock(shard: str, projection_name: str) -> Iterator[bool]:
    """Hold the (projection, shard) maintenance lock for the block; yields False if someone else has it."""
    with connections[shard].cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [MAINTENANCE_LOCK_CLASS, _lock_key(projection_name)])
        acquired = bool(cursor.fetchone()[0])
    try:
        yield acquired
    finally:
        if acquired:
            with connections[shard].cursor() as cursor:
                cursor.execute(
                    "SELECT pg_advisory_unlock(%s, %s)", [MAINTENANCE_LOCK_CLASS, _lock_key(projection_name)]
                )


def retired_history(projection: Projection) -> str | None:
    """Why the log no longer holds the whole history of ``projection`` (retention retires some of its
    kinds), or ``None``. A projection whose values need every row of a key (a balance, a conversation)
    cannot be recomputed from the log then: replay the archives (``replay_archive``) instead."""
    retained = sorted(set(projection.kinds) & set(settings.WRITES_RETENTION_DAYS))
    if not retained:
        return None
    return (
        f"WRITES_RETENTION_DAYS retires {', '.join(retained)} writes, so the log no longer holds all that "
        f"{projection.name} is computed from; rebuild it from the archives (replay_archive) instead"
    )


def kept_since(projection: Projection) -> datetime:
    """The earliest moment a windowed repair may start from: every row that counts for a bucket from
    then on is still in the log (an event's time is at most two days before its id's day)."""
    floors = [horizon for kind in projection.kinds if (horizon := horizon_number(kind)) is not None]
    if not floors:
        return datetime.min.replace(tzinfo=UTC)
    first_kept = datetime.combine(EPOCH + timedelta(days=max(floors)), datetime.min.time(), tzinfo=UTC)
    return first_kept + timedelta(days=2)


def repair_projection(*, shard: str, projection: Projection, since: datetime | None = None) -> RepairOutcome:
    """Repair one projection on one shard for the window ``since``… (default: the configured hours)."""
    since = since or default_since()
    started_at = timezone.now()
    clock = time.monotonic()
    repairable = repair_support(projection)

    def skipped(message: str) -> RepairOutcome:
        duration = round(time.monotonic() - clock, 3)
        return RepairOutcome(projection.name, shard, RepairRun.Outcome.SKIPPED, since, None, 0, 0, 0, duration, message)

    if repairable is None:
        return skipped("this projection does not support repair (no find_drift/fix_drift)")
    retired = retired_history(projection)
    if retired is not None and not getattr(projection, "windowed", False):
        return skipped(retired)
    since = max(since, kept_since(projection))
    with maintenance_lock(shard, projection.name) as acquired:
        if not acquired:
            result = skipped("another repair or rebuild of this projection is running")
            _record(result, started_at)
            return result
        with transaction.atomic(using=shard), connections[shard].cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            cursor.execute("SELECT position FROM projection_checkpoints WHERE projection = %s", [projection.name])
            found = cursor.fetchone()
            checkpoint = int(found[0]) if found else 0
            scan = repairable.find_drift(cursor, upto=checkpoint, since=since)
        fixed = 0
        with transaction.atomic(using=shard), connections[shard].cursor() as cursor:
            lock_checkpoint(cursor, projection.name)
            if scan.drift:
                fixed = repairable.fix_drift(cursor, scan.drift)
            result = RepairOutcome(
                projection=projection.name,
                shard=shard,
                outcome=RepairRun.Outcome.OK,
                since=since,
                checkpoint=checkpoint,
                rows_checked=scan.rows_checked,
                drift_found=len(scan.drift),
                drift_fixed=fixed,
                duration_seconds=round(time.monotonic() - clock, 3),
            )
            _record(result, started_at)
    if result.drift_found:
        logger.warning(
            "repair %s on %s: %d of %d rows drifted, %d fixed",
            projection.name, shard, result.drift_found, result.rows_checked, result.drift_fixed,
        )  # fmt: skip
    return result


def repair_shard(*, shard: str, since: datetime | None = None, names: list[str] | None = None) -> list[RepairOutcome]:
    """Repair every projection (or those named) on one shard."""
    chosen = [p for p in PROJECTIONS if names is None or p.name in names]
    return [repair_projection(shard=shard, projection=p, since=since) for p in chosen]


def _record(result: RepairOutcome, started_at: datetime) -> None:
    RepairRun.objects.using(result.shard).create(
        projection=result.projection,
        shard=result.shard,
        window_start=result.since,
        checkpoint=result.checkpoint,
        rows_checked=result.rows_checked,
        drift_found=result.drift_found,
        drift_fixed=result.drift_fixed,
        duration_seconds=result.duration_seconds,
        outcome=result.outcome,
        message=result.message,
        started_at=started_at,
    )
