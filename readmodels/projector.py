"""The projector: tails one shard's write log by position and feeds each projection, slice by slice.

Each slice is one transaction holding the projection's checkpoint row (``FOR UPDATE SKIP LOCKED``, so
two projectors never double-apply and a second one just leaves). It reads only up to the highest
committed position: appliers take the shard's append lock before their rows get positions and keep it
to COMMIT, so no row can later commit below a position already seen.
"""

from __future__ import annotations

import time
from typing import Any

from django.db import connections, transaction

from readmodels.projections import PROJECTIONS, LogRow, Projection

SLICE_POSITIONS = 5_000

_SELECT_ROWS = """
SELECT position, tenant_id, write_id, kind, key, payload, occurred_at, received_at, applied_at
FROM write_log
WHERE position > %s AND position <= %s AND kind = ANY(%s)
ORDER BY position
"""


def _checkpoint_for_update(cursor: Any, name: str) -> int | None:
    cursor.execute(
        "INSERT INTO projection_checkpoints (projection, position, updated_at) VALUES (%s, 0, now()) "
        "ON CONFLICT (projection) DO NOTHING",
        [name],
    )
    cursor.execute("SELECT position FROM projection_checkpoints WHERE projection = %s FOR UPDATE SKIP LOCKED", [name])
    found = cursor.fetchone()
    return None if found is None else int(found[0])


def head_position(cursor: Any) -> int:
    cursor.execute("SELECT coalesce(max(position), 0) FROM write_log")
    return int(cursor.fetchone()[0])


def project_slice(shard: str, projection: Projection, *, slice_positions: int = SLICE_POSITIONS) -> int:
    """Apply the next slice of the log to ``projection``; returns how many positions it advanced
    (0 when caught up, or when another projector holds the checkpoint)."""
    with transaction.atomic(using=shard), connections[shard].cursor() as cursor:
        checkpoint = _checkpoint_for_update(cursor, projection.name)
        if checkpoint is None:
            return 0
        head = head_position(cursor)
        if head <= checkpoint:
            return 0
        upto = min(head, checkpoint + slice_positions)
        cursor.execute(_SELECT_ROWS, [checkpoint, upto, list(projection.kinds)])
        rows = [LogRow(*values) for values in cursor.fetchall()]
        if rows:
            projection.apply(cursor, rows)
        cursor.execute(
            "UPDATE projection_checkpoints SET position = %s, updated_at = now(), "
            "position_applied_at = (SELECT applied_at FROM write_log WHERE position <= %s "
            "ORDER BY position DESC LIMIT 1) WHERE projection = %s",
            [upto, upto, projection.name],
        )
        return upto - checkpoint


def project_shard(shard: str, *, projections: list[Projection] | None = None, time_budget: float = 10.0) -> int:
    """Bring every projection of ``shard`` up to the head of its log (or until the time budget is
    spent); returns the positions advanced in total."""
    deadline = time.monotonic() + time_budget
    advanced = 0
    pending = list(PROJECTIONS if projections is None else projections)
    while pending and time.monotonic() < deadline:
        still_behind = []
        for projection in pending:
            step = project_slice(shard, projection)
            advanced += step
            if step:
                still_behind.append(projection)
        pending = still_behind
    return advanced
