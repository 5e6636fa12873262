"""Event counts as a pure function: log rows to per-bucket deltas (no database)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

from readmodels.projections import LogRow
from readmodels.projections.events import count_deltas

TENANT = uuid.uuid4()


def row(position: int, name: str, occurred_at: datetime) -> LogRow:
    return LogRow(position, TENANT, uuid.uuid4(), "event", name, {}, occurred_at, occurred_at, occurred_at)


def test_count_deltas_buckets_by_utc_hour_and_day():
    rows = [
        row(1, "signup", datetime(2026, 3, 1, 23, 59, 59, tzinfo=UTC)),
        row(2, "signup", datetime(2026, 3, 1, 23, 0, tzinfo=UTC)),
        row(3, "signup", datetime(2026, 3, 2, 0, 0, tzinfo=UTC)),
        row(4, "login", datetime(2026, 3, 2, 0, 30, tzinfo=UTC)),
    ]
    hourly, daily = count_deltas(rows)
    assert hourly == {
        (TENANT, "signup", datetime(2026, 3, 1, 23, tzinfo=UTC)): 2,
        (TENANT, "signup", datetime(2026, 3, 2, 0, tzinfo=UTC)): 1,
        (TENANT, "login", datetime(2026, 3, 2, 0, tzinfo=UTC)): 1,
    }
    assert daily == {
        (TENANT, "signup", datetime(2026, 3, 1, tzinfo=UTC)): 2,
        (TENANT, "signup", datetime(2026, 3, 2, tzinfo=UTC)): 1,
        (TENANT, "login", datetime(2026, 3, 2, tzinfo=UTC)): 1,
    }


def test_count_deltas_converts_other_offsets_to_utc_buckets():
    # 01:30 at UTC+2 is 23:30 UTC the day before.
    plus_two = timezone(timedelta(hours=2))
    hourly, daily = count_deltas([row(1, "x", datetime(2026, 3, 2, 1, 30, tzinfo=plus_two))])
    assert list(hourly) == [(TENANT, "x", datetime(2026, 3, 1, 23, tzinfo=UTC))]
    assert list(daily) == [(TENANT, "x", datetime(2026, 3, 1, tzinfo=UTC))]


def test_count_deltas_of_nothing_is_empty():
    assert count_deltas([]) == ({}, {})
