"""Shared test helpers of the read side: log rows applied through the real applier, and the counts
the log implies, recomputed independently of the projection."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from django.db import connections

from writes.apply import apply_batch


def event_message(tenant_id: uuid.UUID, events: Iterable[tuple[str, datetime]]) -> list[Any]:
    """One message's groups: a group of events (name, occurred_at) for one tenant."""
    received = datetime.now(UTC).isoformat()
    rows = [
        [str(uuid.uuid4()), name, json.dumps({"n": i}), occurred.isoformat()]
        for i, (name, occurred) in enumerate(events)
    ]
    return [[str(tenant_id), "event", received, rows]]


def apply_events(shard: str, tenant_id: uuid.UUID, events: Iterable[tuple[str, datetime]]) -> int:
    return apply_batch(shard=shard, groups=event_message(tenant_id, events)).applied


def expected_counts(shard: str, grain: str) -> Counter[tuple[Any, ...]]:
    """(tenant_id, name, bucket) → count, straight from the log."""
    with connections[shard].cursor() as cursor:
        cursor.execute(
            "SELECT tenant_id, key, date_trunc(%s, occurred_at, 'UTC'), count(*) FROM write_log "
            "WHERE kind = 'event' GROUP BY 1, 2, 3",
            [grain],
        )
        return Counter({(t, n, b): c for t, n, b, c in cursor.fetchall()})


def stored_counts(shard: str, table: str) -> Counter[tuple[Any, ...]]:
    with connections[shard].cursor() as cursor:
        cursor.execute(f"SELECT tenant_id, name, bucket, count FROM {table}")
        return Counter({(t, n, b): c for t, n, b, c in cursor.fetchall()})


def assert_counts_exact(shard: str) -> None:
    assert stored_counts(shard, "event_counts_hourly") == expected_counts(shard, "hour")
    assert stored_counts(shard, "event_counts_daily") == expected_counts(shard, "day")


def log_positions(shard: str) -> list[int]:
    with connections[shard].cursor() as cursor:
        cursor.execute("SELECT position FROM write_log ORDER BY position")
        return [p for (p,) in cursor.fetchall()]
