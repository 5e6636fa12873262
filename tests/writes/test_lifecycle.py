"""Retention without archives: partitions made ahead, a day that leaves whole, a day that keeps the kinds
with a longer retention. (tests/writes/test_log_at_scale.py runs it with archives, millions of rows and
live traffic.)"""

from __future__ import annotations

import io
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.core.management import call_command
from django.db import DatabaseError, connections, transaction

from readmodels.repair import MAINTENANCE_LOCK_CLASS, _lock_key
from tests.conftest import ALL_DATABASES
from writes.apply import RETENTION_EXPIRED, apply_batch
from writes.lifecycle import MAINTENANCE_LOCK_NAME, maintain_log
from writes.models import RejectedWrite, WriteLog
from writes.partitions import attached_days, partition_name, today

pytestmark = [
    pytest.mark.django_db(databases=ALL_DATABASES, transaction=True),
    pytest.mark.usefixtures("lifecycle_reset"),
]

SHARD = "shard_1"
# Each test retires a day of its own (lifecycle_reset makes them writable again afterwards).
DAY_ONE = datetime.now(UTC).replace(hour=6, minute=0, second=0, microsecond=0) - timedelta(days=20)
DAY_TWO, DAY_THREE = DAY_ONE - timedelta(days=1), DAY_ONE - timedelta(days=2)


def group(tenant: uuid.UUID, kind: str, count: int, received: datetime) -> list[object]:
    payload = '{"sender_id": "u", "body": "hi"}' if kind == "message" else "{}"
    items = [[str(uuid.uuid4()), "k", payload, received.isoformat()] for _ in range(count)]
    return [str(tenant), kind, received.isoformat(), items]


def log_of(tenant: uuid.UUID) -> list[tuple[int, str]]:
    return [(row.position, row.kind) for row in WriteLog.objects.using(SHARD).filter(tenant_id=tenant)]


@pytest.fixture
def no_archives(settings):
    settings.WRITES_ARCHIVE = False
    return settings


def test_partitions_are_made_ahead(no_archives):
    no_archives.WRITES_LOG_PARTITIONS_AHEAD_DAYS = 5
    maintain_log(SHARD)
    with connections[SHARD].cursor() as cursor:
        days = attached_days(cursor)
    assert {today() + timedelta(days=n) for n in range(-1, 6)} <= days


def test_a_day_whose_kinds_all_expired_leaves_whole(no_archives):
    tenant = uuid.uuid4()
    apply_batch(shard=SHARD, groups=[group(tenant, "event", 50, DAY_ONE)])
    with connections[SHARD].cursor() as cursor:
        cursor.execute("SELECT count(*) FROM write_id_days WHERE tenant_id = %s", [tenant])
        assert cursor.fetchone()[0] == 50
    no_archives.WRITES_RETENTION_DAYS = {"event": 10}
    report = maintain_log(SHARD)
    [outcome] = [o for o in report.days if o.day == DAY_ONE.date()]
    assert (outcome.action, outcome.archived_rows) == ("dropped", 50)
    assert outcome.swap_seconds < 0.5
    with connections[SHARD].cursor() as cursor:
        assert DAY_ONE.date() not in attached_days(cursor)
        cursor.execute("SELECT to_regclass(%s)", [partition_name(DAY_ONE.date())])
        assert cursor.fetchone()[0] is None  # dropped, not only detached
        cursor.execute("SELECT count(*) FROM write_id_days WHERE id_day = %s", [DAY_ONE.date()])
        assert cursor.fetchone()[0] == 0  # the day's ids are forgotten with it
    assert log_of(tenant) == []
    # A late repeat of that day is refused, never applied again into a retired day.
    late = apply_batch(shard=SHARD, groups=[group(tenant, "event", 1, DAY_ONE)])
    assert (late.applied, late.rejected) == (0, 1)
    assert RejectedWrite.objects.using(SHARD).get(tenant_id=tenant).code == RETENTION_EXPIRED
    # Nothing left to do on the next run.
    assert [o for o in maintain_log(SHARD).days if o.day == DAY_ONE.date()] == []


def test_a_day_keeps_the_kinds_with_a_longer_retention(no_archives):
    tenant = uuid.uuid4()
    apply_batch(
        shard=SHARD,
        groups=[
            group(tenant, "event", 30, DAY_TWO),
            group(tenant, "message", 5, DAY_TWO),
            group(tenant, "event", 30, DAY_TWO),
        ],
    )
    messages = [row for row in log_of(tenant) if row[1] == "message"]
    no_archives.WRITES_RETENTION_DAYS = {"event": 10, "message": 100}
    call_command("maintain_log", "--shard", SHARD, stdout=io.StringIO())
    assert log_of(tenant) == messages  # same positions, nothing else
    with connections[SHARD].cursor() as cursor:
        assert DAY_TWO.date() in attached_days(cursor)
        cursor.execute("SELECT retired_kinds FROM log_partitions WHERE day = %s", [DAY_TWO.date()])
        assert cursor.fetchone()[0] == ["event"]
    # The replacement partition is the log's: append-only and idempotent as before.
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(using=SHARD):
        WriteLog.objects.using(SHARD).filter(tenant_id=tenant).update(key="changed")
    again = WriteLog.objects.using(SHARD).filter(tenant_id=tenant).first()
    assert again is not None
    repeat = [
        str(tenant),
        "message",
        again.received_at.isoformat(),
        [[str(again.write_id), again.key, '{"sender_id": "u", "body": "hi"}', again.occurred_at.isoformat()]],
    ]
    assert apply_batch(shard=SHARD, groups=[repeat]).duplicates == 1
    # Messages expire later: the day then leaves whole.
    no_archives.WRITES_RETENTION_DAYS = {"event": 10, "message": 15}
    [outcome] = [o for o in maintain_log(SHARD).days if o.day == DAY_TWO.date()]
    assert (outcome.kinds, outcome.action, outcome.archived_rows) == (["message"], "dropped", 5)


def test_dry_run_changes_nothing(no_archives):
    tenant = uuid.uuid4()
    apply_batch(shard=SHARD, groups=[group(tenant, "event", 3, DAY_THREE)])
    no_archives.WRITES_RETENTION_DAYS = {"event": 10}
    report = maintain_log(SHARD, dry_run=True)
    assert [o.action for o in report.days if o.day == DAY_THREE.date()] == ["would retire"]
    assert len(log_of(tenant)) == 3


def test_a_pass_while_another_runs_does_nothing(no_archives):
    tenant = uuid.uuid4()
    apply_batch(shard=SHARD, groups=[group(tenant, "event", 3, DAY_THREE)])
    no_archives.WRITES_RETENTION_DAYS = {"event": 10}
    lock = [MAINTENANCE_LOCK_CLASS, _lock_key(MAINTENANCE_LOCK_NAME)]
    other = connections.create_connection(SHARD)  # another session: beat's pass, say
    try:
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(%s, %s)", lock)
        report = maintain_log(SHARD)
        assert (report.busy, report.days, report.created) == (True, [], [])
        assert "another maintenance pass is running" in report.describe()
        assert len(log_of(tenant)) == 3
    finally:
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s, %s)", lock)
        other.close()
    after = maintain_log(SHARD)
    assert [o.action for o in after.days if o.day == DAY_THREE.date()] == ["dropped"], after
