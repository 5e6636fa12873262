"""Helpers shared by the chat and ledger projections: the checkpoint as repair needs it (locked, so
the projector cannot move it meanwhile) and log payloads as dicts."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from readmodels.projections.base import LogRow

_decode = msgspec.json.Decoder().decode


def payload_of(row: LogRow) -> dict[str, Any]:
    """A log row's payload as a dict. Django's psycopg setup loads ``jsonb`` as text on raw cursors,
    so the projector's rows may carry the JSON text."""
    payload: Any = row.payload
    return payload if isinstance(payload, dict) else dict(_decode(payload))


def first_position_since(cursor: Any, since: datetime, *, upto: int) -> int:
    """The lowest log position applied at or after ``since`` (``upto + 1`` if none), found by bisecting
    the primary key: a few index probes however long the log, rather than a scan of ``applied_at``.
    Positions follow commit order, so ``applied_at`` rises with them up to the few milliseconds between
    a statement's start and its commit; a window edge that far off only widens the repair slightly."""
    low, high = 1, upto + 1
    while low < high:
        middle = (low + high) // 2
        cursor.execute(
            "SELECT position, applied_at FROM write_log WHERE position >= %s AND position <= %s "
            "ORDER BY position LIMIT 1",
            [middle, upto],
        )
        found = cursor.fetchone()
        if found is None or found[1] >= since:
            high = middle
        else:
            low = int(found[0]) + 1
    return low


def current_checkpoint(cursor: Any, projection: str) -> int:
    cursor.execute("SELECT position FROM projection_checkpoints WHERE projection = %s", [projection])
    found = cursor.fetchone()
    return 0 if found is None else int(found[0])
