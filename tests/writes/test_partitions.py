"""The partitioned log: every row in the partition of its id's day, and (tenant, id) applied at most once
across partitions, whatever kind of id and whenever a repeat comes."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta

import pytest
from django.db import connections

from tests.conftest import ALL_DATABASES, make_tenant
from writes.apply import DAY_RETIRED, EXISTS_WITH_DIFFERENT_FIELDS, ID_FROM_THE_FUTURE, RETENTION_EXPIRED, apply_batch
from writes.ledger import account_create
from writes.models import RejectedWrite, WriteLog
from writes.partitions import attached_days, partition_name
from writes.routing import TenantContext

pytestmark = [
    pytest.mark.django_db(databases=ALL_DATABASES, transaction=True),
    pytest.mark.usefixtures("lifecycle_reset"),
]

SHARD = "shard_0"
MIDNIGHT = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=3)


def uuid7_at(moment: datetime) -> str:
    """A UUIDv7 whose time is ``moment``."""
    millis = int(moment.timestamp() * 1000)
    rand = int.from_bytes(uuid.uuid4().bytes[:10], "big")
    value = (millis << 80) | (0x7 << 76) | ((rand >> 62) & 0xFFF) << 64 | (0b10 << 62) | (rand & ((1 << 62) - 1))
    return str(uuid.UUID(int=value))


def event(tenant: uuid.UUID, write_id: str, received: datetime, *, name: str = "signup") -> list[object]:
    return [str(tenant), "event", received.isoformat(), [[write_id, name, "{}", received.isoformat()]]]


def stored(tenant: uuid.UUID) -> list[tuple[str, date]]:
    return [(str(row.write_id), row.id_day) for row in WriteLog.objects.using(SHARD).filter(tenant_id=tenant)]


def rejection(tenant: uuid.UUID, write_id: str) -> RejectedWrite:
    return RejectedWrite.objects.using(SHARD).get(tenant_id=tenant, write_id=write_id)


def test_an_id_that_only_looks_like_its_uuid7_neighbour_gets_a_day_of_its_own_record():
    """A client's UUIDv4 whose first 48 bits equal the UUIDv7 before it in the batch is not a UUIDv7."""
    tenant = uuid.uuid4()
    received = datetime.now(UTC)
    server = uuid7_at(received)
    lookalike = f"{server[:14]}4{server[15:]}"
    items = [[write_id, "k", "{}", received.isoformat()] for write_id in (server, lookalike)]
    assert apply_batch(shard=SHARD, groups=[[str(tenant), "event", received.isoformat(), items]]).applied == 2
    with connections[SHARD].cursor() as cursor:
        cursor.execute("SELECT write_id::text FROM write_id_days WHERE tenant_id = %s", [tenant])
        assert cursor.fetchall() == [(lookalike,)]


def test_a_uuid7_id_names_its_day_even_when_received_after_midnight():
    tenant = uuid.uuid4()
    write_id = uuid7_at(MIDNIGHT - timedelta(milliseconds=1))
    first = apply_batch(shard=SHARD, groups=[event(tenant, write_id, MIDNIGHT + timedelta(milliseconds=500))])
    # A client's retry a day later, and a broker's redelivery: both land on the same partition and stop there.
    again = apply_batch(shard=SHARD, groups=[event(tenant, write_id, MIDNIGHT + timedelta(hours=23))])
    assert (first.applied, again.applied, again.duplicates) == (1, 0, 1)
    assert stored(tenant) == [(write_id, (MIDNIGHT - timedelta(days=1)).date())]
    with connections[SHARD].cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {partition_name((MIDNIGHT - timedelta(days=1)).date())}")
        assert cursor.fetchone()[0] >= 1


def test_another_id_keeps_the_day_it_was_first_applied_on_across_midnight():
    tenant = uuid.uuid4()
    write_id = str(uuid.uuid4())
    before = MIDNIGHT - timedelta(seconds=1)
    assert apply_batch(shard=SHARD, groups=[event(tenant, write_id, before)]).applied == 1
    for later in (MIDNIGHT + timedelta(seconds=1), MIDNIGHT + timedelta(days=2)):
        again = apply_batch(shard=SHARD, groups=[event(tenant, write_id, later)])
        assert (again.applied, again.duplicates, again.rejected) == (0, 1, 0)
    # The same id with other content on a later day is reported, as within one day.
    other = apply_batch(shard=SHARD, groups=[event(tenant, write_id, MIDNIGHT + timedelta(days=1), name="other")])
    assert other.rejected == 1
    assert rejection(tenant, write_id).code == EXISTS_WITH_DIFFERENT_FIELDS
    assert stored(tenant) == [(write_id, before.date())]


def test_an_old_uuid7_repeat_is_found_in_its_own_day():
    tenant = uuid.uuid4()
    write_id = uuid7_at(MIDNIGHT + timedelta(hours=12))
    assert apply_batch(shard=SHARD, groups=[event(tenant, write_id, MIDNIGHT + timedelta(hours=12))]).applied == 1
    # Three days later the id is too old to name its day by itself: the applier looks in that day.
    late = apply_batch(shard=SHARD, groups=[event(tenant, write_id, MIDNIGHT + timedelta(days=3))])
    assert (late.applied, late.duplicates) == (0, 1)
    assert stored(tenant) == [(write_id, MIDNIGHT.date())]


def test_an_old_uuid7_first_seen_late_gets_its_receipt_day_for_good():
    tenant = uuid.uuid4()
    write_id = uuid7_at(MIDNIGHT - timedelta(days=10))
    received = MIDNIGHT + timedelta(hours=1)
    assert apply_batch(shard=SHARD, groups=[event(tenant, write_id, received)]).applied == 1
    again = apply_batch(shard=SHARD, groups=[event(tenant, write_id, received + timedelta(days=2))])
    assert (again.applied, again.duplicates) == (0, 1)
    assert stored(tenant) == [(write_id, received.date())]


def test_an_id_reused_by_another_kind_on_another_day_is_reported():
    tenant = uuid.uuid4()
    for account in ("a", "b"):
        account_create(tenant=TenantContext(tenant, SHARD), account_id=account, currency="EUR", no_overdraft=False)
    write_id = str(uuid.uuid4())
    apply_batch(shard=SHARD, groups=[event(tenant, write_id, MIDNIGHT - timedelta(hours=1))])
    payload = '{"debit_account": "a", "credit_account": "b", "amount": 1, "currency": "EUR"}'
    received = (MIDNIGHT + timedelta(days=1)).isoformat()
    result = apply_batch(
        shard=SHARD, groups=[[str(tenant), "transfer", received, [[write_id, write_id, payload, received]]]]
    )
    assert result.rejected == 1
    assert rejection(tenant, write_id).code == EXISTS_WITH_DIFFERENT_FIELDS


def test_a_uuid7_from_the_future_is_refused_and_the_rest_applied():
    tenant = uuid.uuid4()
    received = datetime.now(UTC)
    future, fine = uuid7_at(received + timedelta(days=2)), uuid7_at(received)
    result = apply_batch(
        shard=SHARD,
        groups=[
            [
                str(tenant),
                "event",
                received.isoformat(),
                [[future, "a", "{}", received.isoformat()], [fine, "b", "{}", received.isoformat()]],
            ]
        ],
    )
    assert (result.applied, result.rejected) == (1, 1)
    assert rejection(tenant, future).code == ID_FROM_THE_FUTURE


def test_the_api_refuses_a_client_uuid7_from_the_future():
    tenant = make_tenant("future-ids")
    future = uuid7_at(datetime.now(UTC) + timedelta(days=2))
    answer = tenant.post_json("/api/v1/events", {"batch": [{"name": "a"}, {"id": future, "name": "b"}]})
    assert answer.status_code == 400
    details = answer.json()["error"]["details"]
    assert [(d["index"], d["field"]) for d in details] == [(1, "id")]
    assert "more than a day in the future" in details[0]["message"]


def test_writes_older_than_their_kinds_retention_are_refused(settings):
    settings.WRITES_RETENTION_DAYS = {"event": 2}
    tenant = uuid.uuid4()
    old, kept = MIDNIGHT - timedelta(days=1), datetime.now(UTC)
    result = apply_batch(
        shard=SHARD, groups=[event(tenant, str(uuid.uuid4()), old), event(tenant, str(uuid.uuid4()), kept)]
    )
    assert (result.applied, result.rejected) == (1, 1)
    assert RejectedWrite.objects.using(SHARD).get(tenant_id=tenant).code == RETENTION_EXPIRED
    # Other kinds keep everything.
    chat = [
        str(tenant),
        "message",
        old.isoformat(),
        [[str(uuid.uuid4()), "c1", '{"sender_id": "u", "body": "hi"}', old.isoformat()]],
    ]
    assert apply_batch(shard=SHARD, groups=[chat]).applied == 1


def test_a_missing_day_is_created_and_a_retired_one_refused():
    tenant = uuid.uuid4()
    far = datetime(2021, 3, 4, 5, tzinfo=UTC)
    assert apply_batch(shard=SHARD, groups=[event(tenant, str(uuid.uuid4()), far)]).applied == 1
    with connections[SHARD].cursor() as cursor:
        assert far.date() in attached_days(cursor)
        retired = date(2021, 3, 5)
        cursor.execute("INSERT INTO log_partitions (day, state) VALUES (%s, 'retired')", [retired])
    late = datetime(2021, 3, 5, 1, tzinfo=UTC)
    result = apply_batch(shard=SHARD, groups=[event(tenant, str(uuid.uuid4()), late)])
    assert (result.applied, result.rejected) == (0, 1)
    assert RejectedWrite.objects.using(SHARD).get(tenant_id=tenant).code == DAY_RETIRED
    with connections[SHARD].cursor() as cursor:
        assert retired not in attached_days(cursor)


def test_status_of_a_write_on_an_old_day_is_found_through_its_partition():
    tenant = make_tenant("old-status", shard=SHARD)
    ids = [str(uuid.uuid4()), uuid7_at(MIDNIGHT - timedelta(days=1))]
    received = MIDNIGHT - timedelta(days=1)
    apply_batch(shard=SHARD, groups=[event(tenant.tenant.id, write_id, received) for write_id in ids])
    for write_id in ids:
        status = tenant.get(f"/api/v1/writes/{write_id}").json()
        assert status["status"] == "applied", status
