"""A projection's checkpoint as repair needs it: locked, so the projector cannot move it meanwhile."""

from __future__ import annotations

from typing import Any


def checkpoint_for_repair(cursor: Any, projection: str) -> int:
    """The projection's position, locked until the caller's transaction ends (the projector, which
    takes it with SKIP LOCKED, just skips its turn); 0 if it never ran."""
    cursor.execute("SELECT position FROM projection_checkpoints WHERE projection = %s FOR UPDATE", [projection])
    found = cursor.fetchone()
    return 0 if found is None else int(found[0])
