"""Event counts: how many events of each name a tenant recorded per UTC hour and per UTC day.

Buckets come from ``occurred_at`` (the client's time when given), so a late event lands in its own hour.
A slice becomes one upsert per (tenant, name, bucket) row, ``count = count + delta``; repair compares
a recomputation from the log with the stored rows and fixes the difference with the same kind of delta.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from readmodels.projections.base import DriftScan, LogRow

HOURLY_TABLE = "event_counts_hourly"
DAILY_TABLE = "event_counts_daily"

BucketKey = tuple[uuid.UUID, str, datetime]

# Rows go in sorted by key, so two transactions touching the same buckets lock them in the same order.
_UPSERT = {
    table: f"""
INSERT INTO {table} AS stored (tenant_id, name, bucket, count)
SELECT * FROM unnest(%s::uuid[], %s::text[], %s::timestamptz[], %s::bigint[])
ON CONFLICT (tenant_id, name, bucket) DO UPDATE SET count = stored.count + EXCLUDED.count
"""  # noqa: S608 (table names are the constants above)
    for table in (HOURLY_TABLE, DAILY_TABLE)
}

_DELETE_EMPTY = {
    table: f"""
DELETE FROM {table} AS stored
USING unnest(%s::uuid[], %s::text[], %s::timestamptz[]) AS k(tenant_id, name, bucket)
WHERE (stored.tenant_id, stored.name, stored.bucket) = (k.tenant_id, k.name, k.bucket) AND stored.count = 0
"""  # noqa: S608
    for table in (HOURLY_TABLE, DAILY_TABLE)
}

# The same aggregation as ``count_deltas``, server-side, for a position range: one scan of the range
# feeds both tables.
_FOLD_RANGE = f"""
WITH hourly AS (
    SELECT tenant_id, key AS name, date_trunc('hour', occurred_at, 'UTC') AS bucket, count(*) AS n
    FROM write_log
    WHERE position > %(after)s AND position <= %(upto)s AND kind = 'event'
    GROUP BY 1, 2, 3
), to_hourly AS (
    INSERT INTO {HOURLY_TABLE} AS stored (tenant_id, name, bucket, count)
    SELECT tenant_id, name, bucket, n FROM hourly ORDER BY 1, 2, 3
    ON CONFLICT (tenant_id, name, bucket) DO UPDATE SET count = stored.count + EXCLUDED.count
)
INSERT INTO {DAILY_TABLE} AS stored (tenant_id, name, bucket, count)
SELECT tenant_id, name, date_trunc('day', bucket, 'UTC'), sum(n) FROM hourly GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
ON CONFLICT (tenant_id, name, bucket) DO UPDATE SET count = stored.count + EXCLUDED.count
"""  # noqa: S608

# Expected (from the log up to the checkpoint) against stored, bucket by bucket, for one table.
_COMPARE = {
    (table, grain): f"""
WITH expected AS (
    SELECT tenant_id, key AS name, date_trunc('{grain}', occurred_at, 'UTC') AS bucket, count(*) AS n
    FROM write_log
    WHERE kind = 'event' AND position <= %(upto)s AND occurred_at >= %(since)s AND id_day >= %(since_day)s
    GROUP BY 1, 2, 3
), stored AS (
    SELECT tenant_id, name, bucket, count FROM {table} WHERE bucket >= %(since)s
)
SELECT coalesce(e.tenant_id, s.tenant_id), coalesce(e.name, s.name), coalesce(e.bucket, s.bucket),
       coalesce(e.n, 0) - coalesce(s.count, 0)
FROM expected e FULL JOIN stored s
    ON e.tenant_id = s.tenant_id AND e.name = s.name AND e.bucket = s.bucket
"""  # noqa: S608
    for table, grain in ((HOURLY_TABLE, "hour"), (DAILY_TABLE, "day"))
}


def hour_of(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def day_of(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def count_deltas(rows: Iterable[LogRow]) -> tuple[Counter[BucketKey], Counter[BucketKey]]:
    """Per-bucket increments for a slice of event rows: (hourly, daily)."""
    hourly: Counter[BucketKey] = Counter()
    for row in rows:
        hourly[(row.tenant_id, row.key, hour_of(row.occurred_at))] += 1
    daily: Counter[BucketKey] = Counter()
    for (tenant_id, name, hour), n in hourly.items():
        daily[(tenant_id, name, day_of(hour))] += n
    return hourly, daily


def _columns(deltas: Iterable[tuple[BucketKey, int]]) -> list[list[Any]]:
    tenants: list[Any] = []
    names: list[Any] = []
    buckets: list[Any] = []
    counts: list[Any] = []
    for (tenant_id, name, bucket), n in sorted(deltas):
        tenants.append(tenant_id)
        names.append(name)
        buckets.append(bucket)
        counts.append(n)
    return [tenants, names, buckets, counts]


def earliest_id_day(since: datetime) -> date:
    """The oldest partition that can hold an event that occurred at or after ``since``: a client's
    timestamp is at most a day ahead of the receipt, and an id's day at most a day before it
    (``writes.partitions``). Repair reads those partitions only, not the whole log."""
    return (since - timedelta(days=2)).astimezone(UTC).date()


@dataclass(frozen=True, slots=True)
class CountDrift:
    """One stored counter that differs from the log: add ``delta`` to it."""

    table: str
    tenant_id: uuid.UUID
    name: str
    bucket: datetime
    delta: int


class EventCounts:
    name = "event_counts"
    kinds = frozenset({"event"})
    tables = (HOURLY_TABLE, DAILY_TABLE)
    #: A bucket's count needs only the rows of that bucket, so repair stays correct under retention as
    #: long as its window lies inside what the log still keeps (``readmodels.repair``).
    windowed = True

    def apply(self, cursor: Any, rows: Sequence[LogRow]) -> None:
        hourly, daily = count_deltas(rows)
        for table, deltas in ((HOURLY_TABLE, hourly), (DAILY_TABLE, daily)):
            if deltas:
                cursor.execute(_UPSERT[table], _columns(deltas.items()))

    def fold_range(self, cursor: Any, after: int, upto: int) -> None:
        cursor.execute(_FOLD_RANGE, {"after": after, "upto": upto})

    def find_drift(self, cursor: Any, *, upto: int, since: datetime) -> DriftScan:
        checked = 0
        drift: list[CountDrift] = []
        for (table, grain), statement in _COMPARE.items():
            start = hour_of(since) if grain == "hour" else day_of(since)
            cursor.execute(statement, {"upto": upto, "since": start, "since_day": earliest_id_day(start)})
            for tenant_id, name, bucket, delta in cursor.fetchall():
                checked += 1
                if delta:
                    drift.append(CountDrift(table, tenant_id, name, bucket, int(delta)))
        return DriftScan(rows_checked=checked, drift=drift)

    def fix_drift(self, cursor: Any, drift: Sequence[Any]) -> int:
        fixed = 0
        for table in self.tables:
            deltas = [((d.tenant_id, d.name, d.bucket), d.delta) for d in drift if d.table == table]
            if not deltas:
                continue
            columns = _columns(deltas)
            cursor.execute(_UPSERT[table], columns)
            fixed += int(cursor.rowcount)
            # A counter the log says should not exist ends at 0: remove it rather than show a zero bucket.
            cursor.execute(_DELETE_EMPTY[table], columns[:3])
        return fixed
