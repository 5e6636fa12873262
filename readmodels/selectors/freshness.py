"""How fresh a projection is on a shard: ``as_of`` (checkpoint position and its time) and ``lag_seconds``,
and the bounded wait of read-your-own-write (``?min_position=``)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from django.db import connections

MAX_WAIT_SECONDS = 10.0

_FRESHNESS = """
SELECT cp.position, cp.position_applied_at,
       (SELECT applied_at FROM write_log WHERE position > coalesce(cp.position, 0) ORDER BY position LIMIT 1)
FROM (SELECT NULL) AS one
LEFT JOIN projection_checkpoints cp ON cp.projection = %s
"""


def projection_freshness(shard: str, projection: str) -> dict[str, Any]:
    """``as_of``: the log position the projection has reached and when that write was applied;
    ``lag_seconds``: the age of the oldest write it has not read yet (0 when caught up)."""
    with connections[shard].cursor() as cursor:
        cursor.execute(_FRESHNESS, [projection])
        position, applied_at, oldest_pending = cursor.fetchone()
    lag = 0.0 if oldest_pending is None else max(0.0, (datetime.now(UTC) - oldest_pending).total_seconds())
    return {"as_of": {"position": position or 0, "applied_at": applied_at}, "lag_seconds": round(lag, 3)}


def wait_for_position(shard: str, projection: str, min_position: int, *, timeout: float = MAX_WAIT_SECONDS) -> None:
    """Wait (bounded) until the projection has read the log up to ``min_position``."""
    deadline = time.monotonic() + timeout
    while True:
        with connections[shard].cursor() as cursor:
            cursor.execute("SELECT position FROM projection_checkpoints WHERE projection = %s", [projection])
            found = cursor.fetchone()
        if (found is not None and found[0] >= min_position) or time.monotonic() >= deadline:
            return
        time.sleep(0.05)
