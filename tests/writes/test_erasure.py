"""Tenant erasure (GDPR): ``erase_tenant`` removes one tenant from the API, the admin, every shard's log
and read models and the dead-letter queue, and leaves its neighbour on the same shard as it was;
``clean_moved_shards`` deletes the copy a logical-shard move left on the old shard.

Real stack: the API in this process, RabbitMQ, a real Celery worker, PostgreSQL.
"""

from __future__ import annotations

import io
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, connections, transaction
from django.test import Client
from kombu import Connection, Producer

from readmodels.projector import project_shard
from tests.conftest import ALL_DATABASES, TenantHandle, make_tenant
from tests.writes.test_e2e_events import wait_until
from tests.writes.test_ledger_apply import group, transfer
from tests.writes.test_moves import two_tenants_on_shard_0
from writes.apply import apply_batch
from writes.archive import archive_day, verify_archive
from writes.dead_letters import dead_letters_list, dead_letters_replay
from writes.erasure import tenant_tables
from writes.ledger import account_create
from writes.models import ApiKey, ErasedTenant, Tenant, TenantErasure, WriteLog
from writes.moves import logical_shard_move
from writes.partitions import today
from writes.publisher import apply_task_message
from writes.queues import MSGPACK_CONTENT_TYPE, dead_letter_queue, queue_name, register_serializer
from writes.routing import TenantContext
from writes.tombstones import erased_among

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)]

WHEN = "2026-05-01T10:00:00+00:00"
STATS = "/api/v1/stats/events?interval=hour&start=2026-05-01T00:00:00Z&end=2026-05-02T00:00:00Z"
# Every table a tenant has rows in, on a shard: a new one must be erased too (``tenant_tables`` finds it).
EXPECTED_TABLES = [
    "chat_conversations",
    "chat_inboxes",
    "chat_messages",
    "event_counts_daily",
    "event_counts_hourly",
    "ledger_accounts",
    "ledger_balances",
    "rejected_writes",
    "write_id_days",
    "write_log",
]


def rows_of(tenant_id: uuid.UUID) -> dict[str, dict[str, int]]:
    """The tenant's rows per shard and table."""
    found: dict[str, dict[str, int]] = {}
    for alias in settings.SHARD_ALIASES:
        with connections[alias].cursor() as cursor:
            for table in tenant_tables():
                cursor.execute(f"SELECT count(*) FROM {table} WHERE tenant_id = %s", [tenant_id])
                found.setdefault(alias, {})[table] = int(cursor.fetchone()[0])
    return found


def fill(tenant: TenantHandle) -> dict[str, str]:
    """Events, chat messages, ledger transfers and one rejected transfer, all applied and projected.
    Returns the ids of one write of each kind."""
    events = tenant.post_json(
        "/api/v1/events",
        {"batch": [{"name": "signup", "timestamp": WHEN}, {"name": "login", "timestamp": WHEN}]},
    )
    assert events.status_code == 202, events.content
    members = tenant.post_json("/api/v1/conversations/room/members", {"user_ids": ["ann", "bob"]})
    assert members.status_code == 202, members.content
    message = tenant.post_json("/api/v1/conversations/room/messages", {"sender_id": "ann", "body": "hi bob"})
    assert message.status_code == 202, message.content
    for account_id, guarded in [("equity", False), ("wallet", True)]:
        created = tenant.post_json(
            "/api/v1/ledger/accounts", {"id": account_id, "currency": "EUR", "no_overdraft": guarded}
        )
        assert created.status_code == 201, created.content
    ids = {"event": events.json()["ids"][0], "message": message.json()["ids"][0]}
    for name, debit, credit, amount in [("funding", "equity", "wallet", 100), ("overdraw", "wallet", "equity", 500)]:
        body = {"id": str(uuid.uuid4()), "debit_account": debit, "credit_account": credit, "amount": amount}
        response = tenant.post_json("/api/v1/ledger/transfers", {**body, "currency": "EUR"})
        assert response.status_code == 202, response.content
        ids[name] = body["id"]
    statuses = {name: tenant.get(f"/api/v1/writes/{write_id}", wait="20").json() for name, write_id in ids.items()}
    assert [s["status"] for s in statuses.values()] == ["applied", "applied", "applied", "rejected"], statuses
    assert tenant.get(f"/api/v1/writes/{members.json()['ids'][0]}", wait="20").json()["status"] == "applied"
    project_shard(tenant.shard)
    return ids


def reads(tenant: TenantHandle) -> dict[str, Any]:
    """What the tenant reads through the API, without the freshness fields."""
    answers = {}
    for path in [
        STATS,
        "/api/v1/conversations/room",
        "/api/v1/conversations/room/messages",
        "/api/v1/users/bob/inbox",
        "/api/v1/ledger/accounts/wallet",
    ]:
        response = tenant.get(path)
        assert response.status_code == 200, (path, response.content)
        answers[path] = {k: v for k, v in response.json().items() if k not in {"as_of", "lag_seconds", "timed_out"}}
    return answers


def dead_letter(groups: list[list[Any]], shard: str) -> None:
    """Put an ``apply_batch`` message into the dead-letter queue as RabbitMQ dead-letters one."""
    register_serializer()
    task_id, headers, body = apply_task_message(shard, groups)
    death = {"queue": queue_name(shard), "reason": "rejected", "count": 1, "time": datetime.now(UTC)}
    with Connection(settings.CELERY_BROKER_URL, transport_options={"confirm_publish": True}) as connection:
        Producer(connection.channel()).publish(
            body,
            exchange="",
            routing_key=dead_letter_queue().name,
            serializer=MSGPACK_CONTENT_TYPE,
            headers={**headers, "x-death": [death], "x-first-death-queue": queue_name(shard)},
            correlation_id=task_id,
            delivery_mode=2,
            declare=[dead_letter_queue()],
        )


def purge_dead_letters() -> None:
    with Connection(settings.CELERY_BROKER_URL) as connection:
        dead_letter_queue().bind(connection.channel()).purge()


def event_group(tenant: TenantHandle, *names: str) -> list[Any]:
    return [str(tenant.tenant.id), "event", WHEN, [[str(uuid.uuid4()), name, "{}", WHEN] for name in names]]


def staff_client() -> Client:
    User.objects.create_superuser("admin", "admin@example.com", "pw-for-tests")
    client = Client()
    client.login(username="admin", password="pw-for-tests")
    return client


def archived_tenants(root: Path) -> Counter[str]:
    """Rows per tenant in every archive file under ``root``."""
    found: Counter[str] = Counter()
    for path in root.rglob("*.parquet"):
        found.update(str(value) for value in pq.read_table(path, columns=["tenant_id"]).column("tenant_id").to_pylist())
    return found


def test_erase_tenant_removes_everything_of_one_tenant_and_nothing_of_its_neighbour(live_worker, settings, tmp_path):
    settings.WRITES_ARCHIVE_DIR = tmp_path
    purge_dead_letters()
    gone, kept = make_tenant("to-erase", shard="shard_0"), make_tenant("to-keep", shard="shard_0")
    gone_ids, kept_ids = fill(gone), fill(kept)
    # Their day of the log, archived as retention would before taking it out of the database.
    archive_day(shard="shard_0", day=today(), kinds=["event", "message", "member", "transfer"])
    archived = archived_tenants(tmp_path)
    assert archived[str(gone.tenant.id)]
    assert archived[str(kept.tenant.id)]
    # One dead letter holds groups of both tenants, another only the erased tenant's.
    kept_dead = event_group(kept, "kept-dead")
    dead_letter([event_group(gone, "gone-dead", "gone-dead"), kept_dead], "shard_0")
    dead_letter([event_group(gone, "only-gone")], "shard_0")
    assert tenant_tables() == EXPECTED_TABLES
    before = rows_of(gone.tenant.id)
    assert all(before["shard_0"].values()), before  # the erased tenant has rows in every table
    kept_rows, kept_reads = rows_of(kept.tenant.id), reads(kept)
    assert all(kept_rows["shard_0"].values()), kept_rows

    # Without --yes: what would go, and nothing goes.
    preview = io.StringIO()
    with pytest.raises(CommandError, match="add --yes"):
        call_command("erase_tenant", str(gone.tenant.id), stdout=preview)
    assert f"write_log {before['shard_0']['write_log']}" in preview.getvalue()
    assert "dead_letters: 3" in preview.getvalue()
    assert rows_of(gone.tenant.id) == before
    assert gone.get(STATS).status_code == 200
    assert not TenantErasure.objects.exists()

    output = io.StringIO()
    call_command("erase_tenant", str(gone.tenant.id), "--yes", stdout=output)
    assert "Erased tenant" in output.getvalue()

    # The API: the key is refused (every API process drops it from its cache on the deletion's notification).
    wait_until(lambda: gone.get(STATS).status_code == 401, timeout=10)
    assert gone.get(f"/api/v1/writes/{gone_ids['event']}").status_code == 401
    assert gone.post_json("/api/v1/events", {"name": "after"}).status_code == 401
    # The control database: no tenant, no key; one completed record of what was erased.
    assert not Tenant.objects.filter(id=gone.tenant.id).exists()
    assert not ApiKey.objects.filter(tenant_id=gone.tenant.id).exists()
    record = TenantErasure.objects.get(tenant_id=gone.tenant.id)
    assert record.scope == "tenant"
    assert record.completed_at is not None
    assert record.counts["shard_0"] == before["shard_0"]
    assert record.counts["shard_1"] == dict.fromkeys(EXPECTED_TABLES, 0)
    assert (record.counts["api_keys"], record.counts["dead_letters"], record.counts["tenant"]) == (1, 3, 1)
    # The archives: rewritten without the tenant's rows, the neighbour's all there, still sound.
    assert record.counts["archive_rows"] == archived[str(gone.tenant.id)]
    assert archived_tenants(tmp_path) == Counter({str(kept.tenant.id): archived[str(kept.tenant.id)]})
    assert verify_archive(tmp_path) == []
    # The shards: no row of it in any table; a tombstone on every shard for the applier.
    assert rows_of(gone.tenant.id) == {alias: dict.fromkeys(EXPECTED_TABLES, 0) for alias in settings.SHARD_ALIASES}
    for alias in settings.SHARD_ALIASES:
        assert ErasedTenant.objects.using(alias).filter(tenant_id=gone.tenant.id).exists()
        with connections[alias].cursor() as cursor:
            asked = {str(gone.tenant.id), str(gone.tenant.id).upper(), str(kept.tenant.id), "not-a-uuid"}
            assert erased_among(cursor, asked) == {str(gone.tenant.id), str(gone.tenant.id).upper()}
    # The dead-letter queue: only the neighbour's group is left, in a message that still replays.
    letters = dead_letters_list()
    assert [(letter.writes, letter.queue) for letter in letters] == [(1, queue_name("shard_0"))]

    # The admin: the tenant is gone from the tenants, its log and rejected writes are empty, the erasure is listed.
    staff = staff_client()
    assert gone.tenant.name not in staff.get("/admin/writes/tenant/").content.decode()
    assert kept.tenant.name in staff.get("/admin/writes/tenant/").content.decode()
    for changelist, write_id in [("writelog", gone_ids["event"]), ("rejectedwrite", gone_ids["overdraw"])]:
        page = staff.get(f"/admin/writes/{changelist}/", {"shard": "shard_0", "tenant": str(gone.tenant.id)})
        assert page.status_code == 200
        assert write_id not in page.content.decode()
        assert "0 results" in page.content.decode()
        neighbour = staff.get(f"/admin/writes/{changelist}/", {"shard": "shard_0", "tenant": str(kept.tenant.id)})
        assert kept_ids["event" if changelist == "writelog" else "overdraw"] in neighbour.content.decode()
    erasures = staff.get("/admin/writes/tenanterasure/")
    assert str(gone.tenant.id) in erasures.content.decode()
    assert staff.get(f"/admin/writes/tenanterasure/{record.pk}/change/").status_code == 200
    assert staff.get("/admin/writes/tenanterasure/add/").status_code == 403

    # The neighbour: every row, every read and its key as they were.
    assert rows_of(kept.tenant.id) == kept_rows
    assert reads(kept) == kept_reads
    assert [letter.task_id for letter in dead_letters_replay()] == [letter.task_id for letter in letters]
    kept_dead_id = kept_dead[3][0][0]
    assert kept.get(f"/api/v1/writes/{kept_dead_id}", wait="20").json()["status"] == "applied"

    # Erasing the same id again finds nothing and still succeeds.
    call_command("erase_tenant", str(gone.tenant.id), "--yes", stdout=io.StringIO())
    again = TenantErasure.objects.filter(tenant_id=gone.tenant.id).order_by("-requested_at").first()
    assert again is not None
    assert again.pk != record.pk
    assert again.completed_at is not None
    assert again.counts["shard_0"] == dict.fromkeys(EXPECTED_TABLES, 0)
    assert (again.counts["api_keys"], again.counts["dead_letters"], again.counts["tenant"]) == (0, 0, 0)


def in_one_transaction(shard: str, *statements: tuple[str, list[Any]]) -> None:
    with transaction.atomic(using=shard), connections[shard].cursor() as cursor:
        for sql, params in statements:
            cursor.execute(sql, params)


def test_the_log_stays_append_only_outside_an_erasure_and_for_other_tenants_inside_one():
    tenant, other = make_tenant("append-only", shard="shard_0"), make_tenant("other", shard="shard_0")
    apply_batch(shard="shard_0", groups=[event_group(tenant, "a"), event_group(other, "b")])
    erasing = ("SELECT set_config('writes.erasing_tenant', %s, true)", [str(tenant.tenant.id)])
    delete = ("DELETE FROM write_log WHERE tenant_id = %s", [tenant.tenant.id])
    update = ("UPDATE write_log SET key = 'changed' WHERE tenant_id = %s", [tenant.tenant.id])
    delete_other = ("DELETE FROM write_log WHERE tenant_id = %s", [other.tenant.id])
    refused: list[list[tuple[str, list[Any]]]] = [
        [delete],
        [update],
        # During an erasure of ``tenant``: an UPDATE of its rows, and a DELETE of another tenant's, still fail.
        [erasing, update],
        [erasing, delete_other],
    ]
    for statements in refused:
        with pytest.raises(DatabaseError, match="append-only"):
            in_one_transaction("shard_0", *statements)
    # The setting is transaction-local: once that transaction is over, the DELETE fails again.
    in_one_transaction("shard_0", erasing)
    with pytest.raises(DatabaseError, match="append-only"):
        in_one_transaction("shard_0", delete)
    assert WriteLog.objects.using("shard_0").filter(tenant_id__in=[tenant.tenant.id, other.tenant.id]).count() == 2


def test_erase_tenant_interrupted_finishes_on_the_next_run_and_merges_the_extra_steps_counts(monkeypatch):
    purge_dead_letters()
    tenant = make_tenant("interrupted", shard="shard_1")
    apply_batch(shard="shard_1", groups=[event_group(tenant, "a", "b", "c")])
    calls: list[str] = []

    def archives(tenant_id: str) -> dict[str, int]:
        calls.append(tenant_id)
        if len(calls) == 1:
            raise RuntimeError("archive store unreachable")
        return {"archives": 2}

    monkeypatch.setattr("writes.erasure.EXTRA_STEPS", [archives])
    with pytest.raises(RuntimeError, match="unreachable"):
        call_command("erase_tenant", str(tenant.tenant.id), "--yes", stdout=io.StringIO())
    # Interrupted after the shards: their rows are gone, the tenant row is still there, the record unfinished.
    assert rows_of(tenant.tenant.id)["shard_1"]["write_log"] == 0
    assert Tenant.objects.filter(id=tenant.tenant.id).exists()
    record = TenantErasure.objects.get(tenant_id=tenant.tenant.id)
    assert record.completed_at is None

    call_command("erase_tenant", str(tenant.tenant.id), "--yes", stdout=io.StringIO())
    record = TenantErasure.objects.get(tenant_id=tenant.tenant.id)  # the same record, finished
    assert record.completed_at is not None
    assert calls == [str(tenant.tenant.id)] * 2
    assert record.counts["shard_1"]["write_log"] == 3  # counted once, by the run that deleted them
    assert (record.counts["archives"], record.counts["api_keys"], record.counts["tenant"]) == (2, 1, 1)
    assert not Tenant.objects.filter(id=tenant.tenant.id).exists()


def test_erase_tenant_refuses_what_is_no_tenant_id():
    with pytest.raises(CommandError, match="not a tenant id"):
        call_command("erase_tenant", "acme", "--yes", stdout=io.StringIO())


def test_clean_moved_shards_deletes_the_old_copy_of_a_moved_logical_shard_and_nothing_else():
    mover, bystander = two_tenants_on_shard_0()
    for tenant in (mover, bystander):
        context = TenantContext(tenant_id=tenant.tenant.id, shard="shard_0")
        account_create(tenant=context, account_id="equity", currency="EUR", no_overdraft=False)
        account_create(tenant=context, account_id="wallet", currency="EUR", no_overdraft=True)
        apply_batch(shard="shard_0", groups=[event_group(tenant, "signup", "login")])
        members = [str(uuid.uuid4()), "room", '{"user_ids": ["ann", "bob"]}', WHEN]
        message = [str(uuid.uuid4()), "room", '{"sender_id": "ann", "body": "hi bob"}', WHEN]
        apply_batch(shard="shard_0", groups=[[str(tenant.tenant.id), "member", WHEN, [members]]])
        apply_batch(shard="shard_0", groups=[[str(tenant.tenant.id), "message", WHEN, [message]]])
        apply_batch(shard="shard_0", groups=[group(context, [transfer("equity", "wallet", 90)])])
        apply_batch(shard="shard_0", groups=[group(context, [transfer("wallet", "equity", 500)])])  # rejected
    project_shard("shard_0")
    mover_rows, bystander_rows = rows_of(mover.tenant.id), rows_of(bystander.tenant.id)
    assert all(mover_rows["shard_0"].values())

    logical = mover.tenant.logical_shard
    logical_shard_move(logical_shard=logical, target="shard_1")
    project_shard("shard_1")
    moved = rows_of(mover.tenant.id)
    assert moved["shard_0"] == mover_rows["shard_0"]  # the old copy is still there
    assert moved["shard_1"] == mover_rows["shard_0"]  # and all of it on the new shard

    preview = io.StringIO()
    with pytest.raises(CommandError, match="add --yes"):
        call_command("clean_moved_shards", stdout=preview)
    assert str(mover.tenant.id) in preview.getvalue()
    assert rows_of(mover.tenant.id) == moved

    call_command("clean_moved_shards", "--yes", stdout=io.StringIO())
    after = rows_of(mover.tenant.id)
    assert after["shard_0"] == dict.fromkeys(EXPECTED_TABLES, 0)
    assert after["shard_1"] == moved["shard_1"]
    assert rows_of(bystander.tenant.id) == bystander_rows
    # The mover lives on: no tombstone anywhere, its key and its writes still work.
    for alias in settings.SHARD_ALIASES:
        assert not ErasedTenant.objects.using(alias).exists()
    assert mover.get(STATS).status_code == 200
    record = TenantErasure.objects.get(tenant_id=mover.tenant.id)
    assert record.scope == f"moved logical shard {logical} from shard_0"
    assert record.counts == {"shard_0": mover_rows["shard_0"]}
    assert record.completed_at is not None
    assert not TenantErasure.objects.filter(tenant_id=bystander.tenant.id).exists()

    # Nothing left to clean: a second run changes and records nothing.
    output = io.StringIO()
    call_command("clean_moved_shards", stdout=output)
    assert "0 tenant(s)" in output.getvalue()
    call_command("clean_moved_shards", "--yes", stdout=io.StringIO())
    assert TenantErasure.objects.count() == 1
