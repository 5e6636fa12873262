"""PostgreSQL notifications that tell waiting readers a shard's state moved on.

Sent inside the transaction that makes the change, so PostgreSQL delivers them only after COMMIT (and
never for a rollback). The HTTP edge listens on these channels to wake long-polls without polling.
"""

from __future__ import annotations

from typing import Any

#: A batch committed rows into ``write_log`` or ``rejected_writes`` (payload: empty).
WRITES_APPLIED_CHANNEL = "writes_applied"
#: A projection's checkpoint advanced (payload: ``<projection>:<position>``).
PROJECTION_ADVANCED_CHANNEL = "projection_advanced"
#: API keys, tenants or the shard map changed, on the control database (payload: empty). Sent by
#: statement triggers (migration ``writes.0005``), so every way of revoking a key sends it.
API_KEYS_CHANGED_CHANNEL = "api_keys_changed"


def notify_writes_applied(cursor: Any) -> None:
    cursor.execute("SELECT pg_notify(%s, '')", [WRITES_APPLIED_CHANNEL])


def notify_projection_advanced(cursor: Any, projection: str, position: int) -> None:
    cursor.execute("SELECT pg_notify(%s, %s)", [PROJECTION_ADVANCED_CHANNEL, f"{projection}:{position}"])
