"""The bulk applier against a real shard: exactly once, poison isolated, log immutable."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from django.db import connections, transaction
from django.db.utils import DatabaseError

from tests.conftest import ALL_DATABASES
from writes.apply import apply_batch
from writes.models import RejectedWrite, WriteLog

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)

NOW = datetime(2026, 5, 1, 12, tzinfo=UTC).isoformat()


def group(tenant_id: uuid.UUID, rows: list[list[str]]) -> list[object]:
    return [str(tenant_id), "event", NOW, rows]


def event(write_id: str | None = None, *, name: str = "signup", occurred: str = NOW) -> list[str]:
    return [write_id or str(uuid.uuid4()), name, '{"properties": {"n": 1}}', occurred]


def test_apply_batch_inserts_rows_in_order_and_ignores_duplicates():
    tenant = uuid.uuid4()
    rows = [event(name=f"e{i}") for i in range(50)]
    first = apply_batch(shard="shard_0", groups=[group(tenant, rows)])
    again = apply_batch(shard="shard_0", groups=[group(tenant, [*rows[:10], event(name="new")])])
    assert (first.applied, first.duplicates) == (50, 0)
    assert (again.applied, again.duplicates) == (1, 10)
    stored = list(WriteLog.objects.using("shard_0").filter(tenant_id=tenant).order_by("position"))
    assert [w.key for w in stored] == [f"e{i}" for i in range(50)] + ["new"]
    assert stored[0].payload == {"properties": {"n": 1}}
    assert not WriteLog.objects.using("shard_1").filter(tenant_id=tenant).exists()


def test_apply_batch_isolates_poison_rows_and_applies_the_rest():
    tenant = uuid.uuid4()
    good = [event(name=f"g{i}") for i in range(20)]
    bad_time = event(name="bad-time", occurred="the day after tomorrow")
    bad_json = [str(uuid.uuid4()), "bad-json", "{not json", NOW]
    rows = [*good[:7], bad_time, *good[7:15], bad_json, *good[15:]]
    result = apply_batch(shard="shard_1", groups=[group(tenant, rows)])
    assert (result.applied, result.rejected) == (20, 2)
    applied = list(WriteLog.objects.using("shard_1").filter(tenant_id=tenant).values_list("key", flat=True))
    assert applied == [f"g{i}" for i in range(20)]
    rejected = {r.key: r for r in RejectedWrite.objects.using("shard_1").filter(tenant_id=tenant)}
    assert set(rejected) == {"bad-time", "bad-json"}
    assert rejected["bad-time"].code == "invalid_write"
    assert "timestamp" in rejected["bad-time"].reason or "time" in rejected["bad-time"].reason
    assert str(rejected["bad-json"].write_id) == bad_json[0]


def test_write_log_rejects_update_and_delete_in_the_database():
    tenant = uuid.uuid4()
    apply_batch(shard="shard_0", groups=[group(tenant, [event()])])
    for statement in ["UPDATE write_log SET key = 'changed'", "DELETE FROM write_log"]:
        with (
            pytest.raises(DatabaseError, match="append-only"),
            transaction.atomic(using="shard_0"),
            connections["shard_0"].cursor() as cursor,
        ):
            cursor.execute(statement)
    assert WriteLog.objects.using("shard_0").filter(tenant_id=tenant, key="signup").count() == 1


def test_apply_batch_records_rows_whose_id_or_key_cannot_be_stored_as_they_are():
    """Rows that never came through the API (a foreign producer, a replayed old message) are still
    isolated and recorded, under a stand-in id when theirs is not a UUID, never failing the batch."""
    tenant = uuid.uuid4()
    good = [event(name=f"g{i}") for i in range(4)]
    bad_id = ["not-a-uuid", "bad-id", "{}", NOW]
    long_key = [str(uuid.uuid4()), "k" * 300, "{}", NOW]
    result = apply_batch(shard="shard_0", groups=[group(tenant, [good[0], bad_id, good[1], long_key, *good[2:]])])
    assert (result.applied, result.rejected) == (4, 2)
    rejected = {r.key[:6]: r for r in RejectedWrite.objects.using("shard_0").filter(tenant_id=tenant)}
    assert set(rejected) == {"bad-id", "kkkkkk"}
    assert "'not-a-uuid' is not a UUID" in rejected["bad-id"].reason
    assert str(rejected["kkkkkk"].write_id) == long_key[0]
    assert "too long" in rejected["kkkkkk"].reason
