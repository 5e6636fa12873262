"""How fresh a projection is on a shard, for every read endpoint: ``as_of`` (checkpoint position and
when that write was applied), ``lag_seconds``, and the bounded wait of read-your-own-write."""

from __future__ import annotations

import time
from typing import Any

from django.db import connections

from readmodels.projector import Freshness, freshness

POLL_SECONDS = 0.05
_CHECKPOINT = "SELECT position FROM projection_checkpoints WHERE projection = %s"


def as_of(fresh: Freshness) -> dict[str, Any]:
    """The response fields every read model answers with."""
    return {"as_of": {"position": fresh.position, "time": fresh.time}, "lag_seconds": fresh.lag_seconds}


def projection_freshness(shard: str, projection: str) -> dict[str, Any]:
    with connections[shard].cursor() as cursor:
        return as_of(freshness(cursor, projection))


def wait_for_position(*, shard: str, projection: str, position: int, timeout: float) -> bool:
    """Wait until ``projection`` on ``shard`` has read the log up to ``position``; False on timeout."""
    deadline = time.monotonic() + timeout
    with connections[shard].cursor() as cursor:
        while True:
            cursor.execute(_CHECKPOINT, [projection])
            found = cursor.fetchone()
            if found is not None and int(found[0]) >= position:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(POLL_SECONDS, remaining))
