"""Blue/green rebuild on real PostgreSQL: the rebuilt projection equals the live one, reads are served
throughout, writes arriving mid-rebuild are not lost, and the tables keep their index names."""

from __future__ import annotations

import io
import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.core.management import call_command
from django.db import connections

from readmodels.models import ProjectionCheckpoint
from readmodels.projections import Projection
from readmodels.projections.chat import ChatProjection
from readmodels.projections.events import EventCounts
from readmodels.projections.ledger import LedgerProjection
from readmodels.projector import project_shard
from readmodels.rebuild import rebuild_projection
from readmodels.selectors.events import event_counts
from tests.conftest import ALL_DATABASES
from tests.readmodels.helpers import apply_events, assert_counts_exact, log_positions, stored_counts
from tests.readmodels.test_chat_projection import SHARD as CHAT_SHARD
from tests.readmodels.test_chat_projection import Chat
from tests.writes.test_ledger_apply import group, transfer
from writes.apply import apply_batch
from writes.ledger import account_create
from writes.routing import TenantContext

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)

SHARD = "shard_0"
BASE = datetime(2026, 2, 1, tzinfo=UTC)


def load(tenant_id: uuid.UUID, batches: int, per_batch: int = 100) -> None:
    for b in range(batches):
        apply_events(
            SHARD, tenant_id, [(f"n{i % 6}", BASE + timedelta(minutes=13 * i + 1000 * b)) for i in range(per_batch)]
        )


def index_names(table: str) -> set[str]:
    with connections[SHARD].cursor() as cursor:
        cursor.execute(
            "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() AND tablename = %s", [table]
        )
        return {name for (name,) in cursor.fetchall()}


def test_rebuild_equals_live_and_serves_reads_throughout():
    tenant_id = uuid.uuid4()
    load(tenant_id, 20)
    project_shard(SHARD)
    live_hourly = stored_counts(SHARD, "event_counts_hourly")
    live_daily = stored_counts(SHARD, "event_counts_daily")
    live_checkpoint = ProjectionCheckpoint.objects.using(SHARD).get(projection="event_counts").position
    indexes = {t: index_names(t) for t in EventCounts.tables}

    stop = threading.Event()
    totals: list[int] = []
    errors: list[BaseException] = []

    def read_all_the_time() -> None:
        try:
            while not stop.is_set():
                read = event_counts(shard=SHARD, tenant_id=tenant_id, interval="day", start=BASE,
                                    end=BASE + timedelta(days=400), name=None)  # fmt: skip
                totals.append(sum(b.count for b in read.buckets))
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    reader = threading.Thread(target=read_all_the_time)
    reader.start()
    progress: list[tuple[int, int]] = []
    try:
        result = rebuild_projection(
            shard=SHARD, projection=EventCounts(), slice_positions=300, progress=lambda p, h: progress.append((p, h))
        )
    finally:
        stop.set()
        reader.join()

    assert not errors, errors
    assert totals, "the reader got no answer during the rebuild"
    assert set(totals) == {2000}  # never an empty or half-built table
    assert stored_counts(SHARD, "event_counts_hourly") == live_hourly
    assert stored_counts(SHARD, "event_counts_daily") == live_daily
    assert result.position == live_checkpoint
    assert ProjectionCheckpoint.objects.using(SHARD).get(projection="event_counts").position == live_checkpoint
    assert len(progress) > 3
    assert progress[-1] == (live_checkpoint, live_checkpoint)
    assert {t: index_names(t) for t in EventCounts.tables} == indexes
    with connections[SHARD].cursor() as cursor:
        cursor.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'rebuild_%%' OR nspname LIKE 'retired_%%'")
        assert cursor.fetchall() == []


def test_rebuild_keeps_writes_that_arrive_while_it_runs():
    tenant_id = uuid.uuid4()
    load(tenant_id, 10)
    project_shard(SHARD)

    def write_and_project_meanwhile(position: int, head: int) -> None:
        # New writes land, and the live projector applies them, between the rebuild's slices.
        load(tenant_id, 1)
        project_shard(SHARD)

    rebuild_projection(shard=SHARD, projection=EventCounts(), slice_positions=250, progress=write_and_project_meanwhile)
    project_shard(SHARD)
    assert_counts_exact(SHARD)
    assert ProjectionCheckpoint.objects.using(SHARD).get(projection="event_counts").position == max(
        log_positions(SHARD)
    )


def test_rebuild_command_repairs_a_corrupted_projection():
    tenant_id = uuid.uuid4()
    load(tenant_id, 3)
    project_shard(SHARD)
    with connections[SHARD].cursor() as cursor:
        cursor.execute("UPDATE event_counts_daily SET count = count * 2")
        cursor.execute("DELETE FROM event_counts_hourly WHERE name = 'n1'")
    out, err = io.StringIO(), io.StringIO()
    call_command("rebuild_projection", "event_counts", "--shard", SHARD, stdout=out, stderr=err)
    assert_counts_exact(SHARD)
    assert "rebuilt up to position" in out.getvalue()
    assert "100.0%" in err.getvalue()


def test_rebuild_command_rejects_an_unknown_projection():
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="No projection named 'nope'"):
        call_command("rebuild_projection", "nope")


def table_rows(shard: str, table: str, columns: str) -> list[tuple[object, ...]]:
    with connections[shard].cursor() as cursor:
        cursor.execute(f"SELECT {columns} FROM {table} ORDER BY {columns}")
        return list(cursor.fetchall())


CHAT_TABLES = {
    "chat_messages": "position, tenant_id, conversation_id, seq, write_id, sender_id, body, sent_at",
    "chat_conversations": (
        "tenant_id, conversation_id, message_count, member_count, last_message_at, last_sender_id, preview"
    ),
    "chat_inboxes": "tenant_id, conversation_id, user_id, last_read_seq, unread_count",
}
LEDGER_TABLES = {"ledger_balances": "tenant_id, account_id, currency, balance, transfer_count"}


def test_rebuild_of_chat_and_ledger_projections_equals_live():
    chat = Chat()
    chat.add("ann", "bob")
    for n in range(40):
        chat.say(["ann", "bob", "cy"][n % 3], f"message {n}")
        if n % 9 == 0:
            chat.flush()
    chat.read("bob", 12)
    chat.flush()
    tenant = TenantContext(tenant_id=uuid.uuid4(), shard=SHARD)
    for account_id, guarded in [("equity", False), ("wallet", True), ("shop", False)]:
        account_create(tenant=tenant, account_id=account_id, currency="EUR", no_overdraft=guarded)
    apply_batch(shard=SHARD, groups=[group(tenant, [transfer("equity", "wallet", 90), transfer("wallet", "shop", 25)])])
    apply_batch(shard=SHARD, groups=[group(tenant, [transfer("wallet", "shop", 100), transfer("shop", "equity", 5)])])
    cases: list[tuple[str, Projection, dict[str, str]]] = [
        (CHAT_SHARD, ChatProjection(), CHAT_TABLES),
        (SHARD, LedgerProjection(), LEDGER_TABLES),
    ]
    for shard, _, _ in cases:
        project_shard(shard)
    live = {t: table_rows(shard, t, columns) for shard, _, tables in cases for t, columns in tables.items()}
    assert all(live.values())

    for shard, projection, _ in cases:
        rebuild_projection(shard=shard, projection=projection, slice_positions=7)

    assert {t: table_rows(shard, t, columns) for shard, _, tables in cases for t, columns in tables.items()} == live
