"""Reads of the read models for the API: each answer in one statement, so the buckets and the
checkpoint that ``as_of`` reports come from the same snapshot."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from django.db import connections

from readmodels.projections.events import DAILY_TABLE, HOURLY_TABLE, EventCounts
from readmodels.projector import Freshness, freshness_at

Interval = Literal["hour", "day"]

_BUCKETS = {
    interval: f"""
SELECT cp.position, cp.position_applied_at, counts.names, counts.buckets, counts.counts
FROM (SELECT 1) AS one
LEFT JOIN projection_checkpoints AS cp ON cp.projection = %(projection)s
CROSS JOIN (
    SELECT array_agg(name ORDER BY bucket, name) AS names, array_agg(bucket ORDER BY bucket, name) AS buckets,
           array_agg(count ORDER BY bucket, name) AS counts
    FROM (
        SELECT name, bucket, count FROM {table}
        WHERE tenant_id = %(tenant_id)s AND bucket >= %(start)s AND bucket < %(end)s
            AND (%(name)s::text IS NULL OR name = %(name)s::text)
            AND (%(after_bucket)s::timestamptz IS NULL OR (bucket, name) > (%(after_bucket)s, %(after_name)s::text))
        ORDER BY bucket, name
        LIMIT %(limit)s
    ) AS page
) AS counts
"""  # noqa: S608 (table names are constants)
    for interval, table in (("hour", HOURLY_TABLE), ("day", DAILY_TABLE))
}


@dataclass(frozen=True, slots=True)
class Bucket:
    name: str
    start: datetime
    count: int


@dataclass(frozen=True, slots=True)
class EventCountsRead:
    buckets: list[Bucket]
    freshness: Freshness


def event_counts(
    *,
    shard: str,
    tenant_id: uuid.UUID,
    interval: Interval,
    start: datetime,
    end: datetime,
    name: str | None,
    limit: int = 10_000,
    after: tuple[datetime, str] | None = None,
) -> EventCountsRead:
    """At most ``limit`` buckets by (start, name), those after ``after`` (a page's last bucket)."""
    with connections[shard].cursor() as cursor:
        params: dict[str, Any] = {
            "projection": EventCounts.name,
            "tenant_id": tenant_id,
            "start": start,
            "end": end,
            "name": name,
            "limit": limit,
            "after_bucket": after[0] if after else None,
            "after_name": after[1] if after else None,
        }
        cursor.execute(_BUCKETS[interval], params)
        position, at, names, starts, counts = cursor.fetchone()
        buckets = [Bucket(*values) for values in zip(names or [], starts or [], counts or [], strict=True)]
        return EventCountsRead(buckets=buckets, freshness=freshness_at(cursor, position or 0, at))
