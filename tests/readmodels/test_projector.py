"""The projector on a real shard: exact counts, exactly once, whichever path folds the rows."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import connections

from readmodels.models import ProjectionCheckpoint
from readmodels.projections import LogRow
from readmodels.projections.events import EventCounts
from readmodels.projector import head_position, project_shard, project_slice
from tests.conftest import ALL_DATABASES
from tests.readmodels.helpers import (
    apply_events,
    assert_counts_exact,
    expected_counts,
    log_positions,
    stored_counts,
)
from writes.apply import apply_batch

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)

SHARD = "shard_0"
BASE = datetime(2026, 3, 1, 10, tzinfo=UTC)


def load(tenants: list[uuid.UUID], batches: int = 6, per_batch: int = 50) -> None:
    for b in range(batches):
        for t, tenant_id in enumerate(tenants):
            events = [(f"name_{(i + t) % 4}", BASE + timedelta(minutes=37 * i + b)) for i in range(per_batch)]
            apply_events(SHARD, tenant_id, events)


class PythonPathEventCounts:
    """The event counts through ``apply`` (rows fetched into Python) instead of the SQL fast path."""

    name = "event_counts"
    kinds = frozenset({"event"})

    def apply(self, cursor: Any, rows: Sequence[LogRow]) -> None:
        EventCounts().apply(cursor, rows)


@pytest.mark.parametrize("projection", [EventCounts(), PythonPathEventCounts()], ids=["sql-fold", "python-apply"])
def test_project_shard_counts_every_event_exactly_once(projection):
    tenants = [uuid.uuid4(), uuid.uuid4()]
    load(tenants)
    # Small slices, so many slice boundaries fall inside buckets.
    while project_slice(SHARD, projection, slice_positions=37):
        pass
    assert_counts_exact(SHARD)
    assert sum(expected_counts(SHARD, "day").values()) == 2 * 6 * 50

    # Running again adds nothing; more writes are added on top exactly once.
    assert project_shard(SHARD, projections=[projection]) == 0
    load(tenants[:1], batches=1)
    project_shard(SHARD, projections=[projection])
    assert_counts_exact(SHARD)
    checkpoint = ProjectionCheckpoint.objects.using(SHARD).get(projection="event_counts")
    with connections[SHARD].cursor() as cursor:
        assert checkpoint.position == head_position(cursor)
    assert checkpoint.position_applied_at is not None


def test_project_shard_skips_other_kinds_but_moves_past_them():
    tenant_id = uuid.uuid4()
    apply_events(SHARD, tenant_id, [("a", BASE)])
    other = [[str(tenant_id), "audit", BASE.isoformat(), [[str(uuid.uuid4()), "conv-1", "{}", BASE.isoformat()]]]]
    apply_batch(shard=SHARD, groups=other)
    project_shard(SHARD)
    assert stored_counts(SHARD, "event_counts_hourly") == {(tenant_id, "a", BASE): 1}
    checkpoint = ProjectionCheckpoint.objects.using(SHARD).get(projection="event_counts")
    assert checkpoint.position == max(log_positions(SHARD))
