"""The projector: tails one shard's write log by position and feeds each projection, slice by slice.

Each slice is one transaction holding the projection's checkpoint row, so two projectors never
double-apply. It reads only up to the highest committed position: appliers take the shard's append
lock before their rows get positions and keep it to COMMIT, so no row can later commit below a
position already seen.

``project_shard`` waits (briefly) for a checkpoint another run holds instead of skipping it: a run
triggered by a batch that committed just after the other run last read the head would otherwise leave
that batch for beat's safety net.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from django.db import OperationalError, connections, transaction
from django.utils import timezone

from readmodels.projections import PROJECTIONS, LogRow, Projection
from readmodels.projections.base import range_folder
from writes.notifications import notify_projection_advanced

SLICE_POSITIONS = 5_000
# How long a projector run waits for a checkpoint row another run holds (one slice takes milliseconds).
CHECKPOINT_WAIT = "5s"

_SELECT_ROWS = """
SELECT position, tenant_id, write_id, kind, key, payload, occurred_at, received_at, applied_at
FROM write_log
WHERE position > %s AND position <= %s AND kind = ANY(%s)
ORDER BY position
"""

_ADVANCE = """
UPDATE projection_checkpoints SET position = %s, updated_at = now(),
    position_applied_at = (SELECT applied_at FROM write_log WHERE position <= %s ORDER BY position DESC LIMIT 1)
WHERE projection = %s
"""


def _ensure_checkpoint(cursor: Any, name: str) -> None:
    cursor.execute(
        "INSERT INTO projection_checkpoints (projection, position, updated_at) VALUES (%s, 0, now()) "
        "ON CONFLICT (projection) DO NOTHING",
        [name],
    )


def _checkpoint_for_update(cursor: Any, name: str, *, wait: bool) -> int | None:
    _ensure_checkpoint(cursor, name)
    if wait:
        cursor.execute(f"SET LOCAL lock_timeout = '{CHECKPOINT_WAIT}'")
        cursor.execute("SELECT position FROM projection_checkpoints WHERE projection = %s FOR UPDATE", [name])
    else:
        cursor.execute(
            "SELECT position FROM projection_checkpoints WHERE projection = %s FOR UPDATE SKIP LOCKED", [name]
        )
    found = cursor.fetchone()
    return None if found is None else int(found[0])


def lock_checkpoint(cursor: Any, name: str) -> int:
    """Hold ``name``'s checkpoint row for the rest of the transaction, waiting for a running slice; the
    projector skips this projection meanwhile. Returns the checkpoint."""
    _ensure_checkpoint(cursor, name)
    cursor.execute("SELECT position FROM projection_checkpoints WHERE projection = %s FOR UPDATE", [name])
    return int(cursor.fetchone()[0])


def set_checkpoint(cursor: Any, name: str, position: int) -> None:
    cursor.execute(_ADVANCE, [position, position, name])
    notify_projection_advanced(cursor, name, position)


def head_position(cursor: Any) -> int:
    cursor.execute("SELECT coalesce(max(position), 0) FROM write_log")
    return int(cursor.fetchone()[0])


def fold(cursor: Any, projection: Projection, after: int, upto: int) -> None:
    """Fold the log rows at ``after < position <= upto`` into ``projection`` (in the caller's
    transaction, into whatever tables ``search_path`` resolves its names to)."""
    folder = range_folder(projection)
    if folder is not None:
        folder.fold_range(cursor, after, upto)
        return
    cursor.execute(_SELECT_ROWS, [after, upto, list(projection.kinds)])
    rows = [LogRow(*values) for values in cursor.fetchall()]
    if rows:
        projection.apply(cursor, rows)


def project_slice(
    shard: str,
    projection: Projection,
    *,
    slice_positions: int = SLICE_POSITIONS,
    wait: bool = False,
    upto: int | None = None,
) -> int:
    """Apply the next slice of the log to ``projection`` (not past ``upto`` when given); returns how many
    positions it advanced (0 when caught up, or when another projector holds the checkpoint: at once,
    or with ``wait`` after waiting up to ``CHECKPOINT_WAIT`` for it)."""
    try:
        return _fold_next_slice(shard, projection, slice_positions=slice_positions, wait=wait, limit=upto)
    except OperationalError as exc:
        if isinstance(exc.__cause__, psycopg.errors.LockNotAvailable):
            return 0  # another run kept it longer than a slice should take; it is making progress
        raise


def _fold_next_slice(
    shard: str, projection: Projection, *, slice_positions: int, wait: bool, limit: int | None = None
) -> int:
    with transaction.atomic(using=shard), connections[shard].cursor() as cursor:
        checkpoint = _checkpoint_for_update(cursor, projection.name, wait=wait)
        if checkpoint is None:
            return 0
        head = head_position(cursor) if limit is None else min(limit, head_position(cursor))
        if head <= checkpoint:
            return 0
        upto = min(head, checkpoint + slice_positions)
        fold(cursor, projection, checkpoint, upto)
        set_checkpoint(cursor, projection.name, upto)
        return upto - checkpoint


def project_shard(shard: str, *, projections: list[Projection] | None = None, time_budget: float = 10.0) -> int:
    """Bring every projection of ``shard`` up to the head its log had when the run started (or until the
    time budget is spent); returns the positions advanced in total.

    Not chasing writes committed during the run keeps a run as short as the backlog it found: under
    steady load a run that chased the head would hold a (solo) housekeeping worker for the whole time
    budget while the other shards' runs waited. Writes committed meanwhile have triggered a run of
    their own (``readmodels.tasks.request_projection``), which starts after their commit."""
    deadline = time.monotonic() + time_budget
    advanced = 0
    with connections[shard].cursor() as cursor:
        target = head_position(cursor)
    pending = list(PROJECTIONS if projections is None else projections)
    while pending and time.monotonic() < deadline:
        still_behind = []
        for projection in pending:
            step = project_slice(shard, projection, wait=True, upto=target)
            advanced += step
            if step:
                still_behind.append(projection)
        pending = still_behind
    return advanced


@dataclass(frozen=True, slots=True)
class Freshness:
    """How far a projection has read, and how stale that makes it."""

    position: int
    time: datetime | None
    #: Seconds since the oldest log row the projection has not read yet was applied; 0 when caught up.
    lag_seconds: float
    #: Log positions written but not yet read.
    behind: int


def freshness(cursor: Any, name: str) -> Freshness:
    cursor.execute("SELECT position, position_applied_at FROM projection_checkpoints WHERE projection = %s", [name])
    found = cursor.fetchone()
    position, at = (int(found[0]), found[1]) if found else (0, None)
    return freshness_at(cursor, position, at)


def freshness_at(cursor: Any, position: int, at: datetime | None) -> Freshness:
    """The freshness of a projection that has read up to ``position`` (applied at ``at``)."""
    # Both lookups are primary-key probes, however long the log.
    cursor.execute(
        "SELECT applied_at, (SELECT coalesce(max(position), 0) FROM write_log) FROM write_log "
        "WHERE position > %s ORDER BY position LIMIT 1",
        [position],
    )
    oldest_unread = cursor.fetchone()
    if oldest_unread is None:
        return Freshness(position=position, time=at, lag_seconds=0.0, behind=0)
    lag = max(0.0, (timezone.now() - oldest_unread[0]).total_seconds())
    return Freshness(position=position, time=at, lag_seconds=round(lag, 3), behind=int(oldest_unread[1]) - position)
