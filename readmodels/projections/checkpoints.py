"""Helpers shared by the chat and ledger projections: the checkpoint as repair needs it (locked, so
the projector cannot move it meanwhile) and log payloads as dicts."""

from __future__ import annotations

from typing import Any

import msgspec

from readmodels.projections.base import LogRow

_decode = msgspec.json.Decoder().decode


def checkpoint_for_repair(cursor: Any, projection: str) -> int:
    """The projection's position, locked until the caller's transaction ends (the projector, which
    takes it with SKIP LOCKED, just skips its turn); 0 if it never ran."""
    cursor.execute("SELECT position FROM projection_checkpoints WHERE projection = %s FOR UPDATE", [projection])
    found = cursor.fetchone()
    return 0 if found is None else int(found[0])


def payload_of(row: LogRow) -> dict[str, Any]:
    """A log row's payload as a dict. Django's psycopg setup loads ``jsonb`` as text on raw cursors,
    so the projector's rows may carry the JSON text."""
    payload: Any = row.payload
    return payload if isinstance(payload, dict) else dict(_decode(payload))
