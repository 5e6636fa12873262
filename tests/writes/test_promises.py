"""Promises of the README that no other test held the product to: the queue's byte bound, dead-lettering
by the delivery limit, a dead letter replayed twice, ``/readyz`` answering 503, and another tenant's
rejected write."""

from __future__ import annotations

import contextlib
import io
import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import amqp
import psycopg
import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connections
from kombu import Connection

from tests.conftest import ALL_DATABASES, make_tenant
from tests.edge import edge_server
from tests.stack import Worker, dead_letter_depth, failing_transiently, queue_depth, queues_of_their_own
from writes.dead_letters import dead_letters_list
from writes.models import RejectedWrite, WriteLog
from writes.publisher import publish_apply_message
from writes.queues import dead_letter_queue_name, queue_name, shard_queue

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)

ADMIN_URL = "postgres://postgres@127.0.0.1:5432/postgres"


def wait_until(condition: Any, *, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not true after {timeout}s"
        time.sleep(0.05)


def test_queue_over_its_byte_bound_answers_503_queue_full_with_retry_after():
    tenant = make_tenant("bytes")
    padding = "x" * 4_000
    with queues_of_their_own("promise", policy=True, WRITES_QUEUE_MAX_BYTES=10_000), edge_server() as server:
        client = server.client(HTTP_AUTHORIZATION=f"Bearer {tenant.api_key}")
        statuses = []
        for _ in range(20):
            response = client.post("/api/v1/events", {"name": "big", "properties": {"pad": padding}})
            statuses.append(response.status_code)
            if response.status_code != 202:
                break
        depth = queue_depth(shard_queue(tenant.shard))
    # Each message is over 4 KB: the bound of 10,000 bytes holds two or three, far fewer than 20.
    assert 1 <= statuses.count(202) <= 4, statuses
    assert statuses[-1] == 503, statuses
    assert response["Retry-After"] == "1"
    assert response.json()["error"]["code"] == "queue_full"
    assert len(response.json()["error"]["ids"]) == 1
    assert depth == statuses.count(202)  # nothing already queued was dropped to make room


def test_readyz_answers_503_with_retry_after_when_the_broker_does_not_answer():
    # No cached verdict (READYZ_CACHE_SECONDS): each probe checks, so the second sees the broker gone.
    with edge_server(READYZ_CACHE_SECONDS=0) as server:
        assert server.client().get("/readyz").status_code == 200
    with edge_server(CELERY_BROKER_URL="amqp://guest:guest@127.0.0.1:1//", READYZ_CACHE_SECONDS=0) as server:
        response = server.client().get("/readyz")
    assert response.status_code == 503
    assert response["Retry-After"]
    assert response.json()["error"]["details"][0]["broker"] == "unavailable"


@pytest.mark.parametrize("same_shard", [True, False], ids=["same shard", "other shard"])
def test_another_tenants_rejected_write_reads_as_an_unknown_id_without_its_code_or_reason(same_shard):
    owner = make_tenant("owner", shard="shard_0")
    intruder = make_tenant("intruder", shard="shard_0" if same_shard else "shard_1")
    write_id = uuid.uuid4()
    RejectedWrite.objects.using(owner.shard).create(
        tenant_id=owner.tenant.id,
        write_id=write_id,
        kind="transfer",
        key=str(write_id),
        payload="{}",
        code="insufficient_funds",
        reason="secret: the balance of alice is 12",
    )
    mine = owner.get(f"/api/v1/writes/{write_id}").json()
    assert (mine["status"], mine["code"]) == ("rejected", "insufficient_funds")

    theirs = intruder.get(f"/api/v1/writes/{write_id}")
    unknown_id = uuid.uuid4()
    unknown = intruder.get(f"/api/v1/writes/{unknown_id}")
    assert theirs.status_code == unknown.status_code == 200
    assert theirs.json() == {**unknown.json(), "id": str(write_id)}
    assert theirs.json()["status"] == "pending"
    assert "secret" not in theirs.content.decode()


# --- dead letters --------------------------------------------------------------------------------


@contextlib.contextmanager
def apply_hangs(shard: str, tenant_id: uuid.UUID) -> Iterator[None]:
    """Every insert of this tenant's writes hangs: the worker applying them stays inside its transaction."""
    with connections[shard].cursor() as cursor:
        cursor.execute(
            f"""
            CREATE FUNCTION test_hang_tenant() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.tenant_id = '{tenant_id}' THEN PERFORM pg_sleep(600); END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER test_hang_tenant BEFORE INSERT ON write_log
                FOR EACH ROW EXECUTE FUNCTION test_hang_tenant();
            """
        )
    try:
        yield
    finally:
        with connections[shard].cursor() as cursor:
            cursor.execute("DROP TRIGGER test_hang_tenant ON write_log; DROP FUNCTION test_hang_tenant();")


def _end_backends_of(shard: str, application: str) -> None:
    """A killed worker's backend sleeps on in its trigger, holding the shard's append lock: end it."""
    name = connections[shard].settings_dict["NAME"]
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(
            # While applying, a worker's session names its transaction ("apply shard_0 messages=…").
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
            "AND (application_name = %s OR application_name LIKE 'apply %%')",
            [name, application],
        )


def _hanging_in_apply(shard: str, application: str) -> bool:
    name = connections[shard].settings_dict["NAME"]
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        row = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
            " AND (application_name = %s OR application_name LIKE 'apply %%')"
            " AND state = 'active' AND wait_event = 'PgSleep'",
            [name, application],
        ).fetchone()
    return bool(row and row[0])


def _event_message(tenant_id: uuid.UUID, write_id: str) -> list[Any]:
    now = datetime.now(UTC).isoformat()
    return [[str(tenant_id), "event", now, [[write_id, "parked", json.dumps({}), now]]]]


@pytest.mark.e2e
def test_a_message_that_keeps_killing_its_worker_is_dead_lettered_by_the_delivery_limit():
    tenant = make_tenant("deadly", shard="shard_0")
    write_id = str(uuid.uuid4())
    application = f"promise-{uuid.uuid4().hex[:6]}"
    with queues_of_their_own("promise", policy=True, WRITES_QUEUE_DELIVERY_LIMIT=1) as prefix:
        environment = {"WRITES_QUEUE_PREFIX": prefix, "WRITES_QUEUE_DELIVERY_LIMIT": "1", "PGAPPNAME": application}
        assert dead_letter_depth() == 0  # declared, so that what the shard queue dead-letters is kept
        publish_apply_message(shard_queue(tenant.shard), tenant.shard, _event_message(tenant.tenant.id, write_id))
        kills = 0
        with apply_hangs(tenant.shard, tenant.tenant.id):
            # Each delivery hangs the worker inside its transaction; it is killed, as the OOM killer would.
            while dead_letter_depth() == 0:
                assert kills < 4, f"still not dead-lettered after {kills} deliveries"
                worker = Worker([queue_name(tenant.shard)], name="deadly", environment=environment)
                try:
                    wait_until(lambda: _hanging_in_apply(tenant.shard, application), what="the worker inside the apply")
                finally:
                    worker.kill()
                    _end_backends_of(tenant.shard, application)
                kills += 1
                wait_until(
                    lambda: dead_letter_depth() + queue_depth(shard_queue(tenant.shard)) == 1,
                    what="the message back in a queue",
                )
        letters = dead_letters_list()
        source = queue_name(tenant.shard)
    # Delivery limit 1: the first delivery and one redelivery, then the dead-letter queue.
    assert kills == 2
    assert [letter.reason for letter in letters] == ["delivery_limit"]
    assert letters[0].queue == source
    assert not WriteLog.objects.using(tenant.shard).filter(write_id=write_id).exists()


def duplicates_counted(worker: Worker, shard: str) -> float:
    for line in worker.metrics().splitlines():
        if line.startswith("writes_rows_duplicate_total{") and f'shard="{shard}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _copy_dead_letter() -> None:
    """Put a second copy of the (only) dead letter in its queue: the same message replayed twice."""
    with Connection(settings.CELERY_BROKER_URL) as connection:
        channel: Any = connection.default_channel
        message = channel.basic_get(queue=dead_letter_queue_name(), no_ack=False)
        assert message is not None
        copy = amqp.Message(message.body, **dict(message.properties))
        channel.basic_publish(copy, exchange="", routing_key=dead_letter_queue_name())
        channel.basic_reject(message.delivery_tag, requeue=True)


@pytest.mark.e2e
def test_a_dead_letter_replayed_twice_is_applied_once():
    tenant = make_tenant("replayed", shard="shard_1")
    write_id = str(uuid.uuid4())
    with queues_of_their_own("promise", policy=True) as prefix:
        assert dead_letter_depth() == 0  # declared, so that what the shard queue dead-letters is kept
        worker = Worker([queue_name(tenant.shard)], name="replayed", environment={"WRITES_QUEUE_PREFIX": prefix})
        try:
            with failing_transiently(tenant.shard, tenant.tenant.id):
                publish_apply_message(
                    shard_queue(tenant.shard), tenant.shard, _event_message(tenant.tenant.id, write_id)
                )
                wait_until(lambda: dead_letter_depth() == 1, what="dead-lettered after its capped retries")
                _copy_dead_letter()
                wait_until(lambda: dead_letter_depth() == 2, what="the copy in the dead-letter queue")
            replay = io.StringIO()
            call_command("replay_dead_letters", stdout=replay)
            assert "2 message(s) put back" in replay.getvalue()
            wait_until(lambda: WriteLog.objects.using(tenant.shard).filter(write_id=write_id).exists(), what="applied")
            # Both copies were taken: once the queue is empty and nothing is unacked, the second was applied too.
            wait_until(lambda: queue_depth(shard_queue(tenant.shard)) == 0, what="the shard queue drained")
            # The second copy found its write in the log already: counted as a duplicate, not applied again.
            wait_until(lambda: duplicates_counted(worker, tenant.shard) >= 1, what="the second copy applied")
        finally:
            worker.stop()
        call_command("replay_dead_letters", stdout=io.StringIO())  # a second replay finds nothing to do
    assert dead_letter_depth() == 0
    assert WriteLog.objects.using(tenant.shard).filter(tenant_id=tenant.tenant.id, write_id=write_id).count() == 1
    assert not RejectedWrite.objects.using(tenant.shard).filter(write_id=write_id).exists()
