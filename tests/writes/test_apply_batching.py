"""Several messages per transaction: the batching apply consumer against a real worker, RabbitMQ and
PostgreSQL, and the COPY text the applier writes."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from django.conf import settings
from django.test import override_settings
from kombu import Connection, Producer

from tests.conftest import ALL_DATABASES
from tests.stack import Worker
from tests.writes.test_e2e_events import wait_until
from writes.apply import apply_batch, group_copy_text
from writes.models import RejectedWrite, WriteLog
from writes.publisher import apply_task_message
from writes.queues import MSGPACK_CONTENT_TYPE, queue_name, register_serializer, shard_queue

NOW = datetime(2026, 5, 1, 12, tzinfo=UTC).isoformat()
SHARD = "shard_1"


def publish(groups_per_message: list[list[list[Any]]]) -> None:
    register_serializer()
    target = shard_queue(SHARD)
    with Connection(settings.CELERY_BROKER_URL, transport_options={"confirm_publish": True}) as connection:
        producer = Producer(connection.channel())
        for groups in groups_per_message:
            task_id, headers, body = apply_task_message(SHARD, groups)
            producer.publish(
                body,
                exchange=target.exchange,
                routing_key=queue_name(SHARD),
                serializer=MSGPACK_CONTENT_TYPE,
                headers=headers,
                correlation_id=task_id,
                delivery_mode=2,
                declare=[target],
            )


def event(name: str, write_id: str | None = None, occurred: str = NOW) -> list[str]:
    return [write_id or str(uuid.uuid4()), name, json.dumps({"properties": {"name": name}}), occurred]


@pytest.mark.e2e
@pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)
@override_settings(WRITES_QUEUE_PREFIX=f"batching.{uuid.uuid4().hex[:8]}")
def test_worker_applies_queued_messages_together_isolating_poison_and_ignoring_repeats():
    # Queues of this test's own: the suite's shared worker must not take these messages.
    tenant = str(uuid.uuid4())
    repeated = event("repeated")
    rows = [[event(f"m{m}-{n}") for n in range(3)] for m in range(12)]
    rows[4].append(event("bad-time", occurred="not a time"))
    rows[7].append(repeated)
    rows[9].append(repeated)
    # Queued before any worker runs: the worker finds them all at once.
    publish([[[tenant, "event", NOW, message_rows]] for message_rows in rows])

    worker = Worker([queue_name(SHARD)], name="batching")
    try:
        log = WriteLog.objects.using(SHARD).filter(tenant_id=tenant)
        wait_until(lambda: log.count() == 12 * 3 + 1)
        # One transaction for all twelve messages (the worker logs each COMMIT once).
        assert "applied 37 of 39 writes from 12 message(s) in " in worker.log_text()
    finally:
        worker.stop()
        with Connection(settings.CELERY_BROKER_URL) as connection:
            shard_queue(SHARD).bind(connection.channel()).delete()
    assert log.filter(key="repeated").count() == 1
    rejected = RejectedWrite.objects.using(SHARD).get(tenant_id=tenant)
    assert (rejected.key, rejected.code) == ("bad-time", "invalid_write")
    # Arrival order is kept across messages.
    keys = list(log.order_by("position").values_list("key", flat=True))
    assert keys.index("m0-0") < keys.index("m5-2") < keys.index("m11-2")


@pytest.mark.django_db(databases=ALL_DATABASES)
def test_apply_batch_stores_fields_that_need_copy_escapes_exactly():
    tenant = str(uuid.uuid4())
    awkward = ["tab\there", "new\nline", "back\\slash", "carriage\rreturn", "\\N", "é ünïcode ✓"]
    rows = [[str(uuid.uuid4()), key, json.dumps({"text": key, "esc": "a\\tb"}), NOW] for key in awkward]
    plain = [event("plain")]
    result = apply_batch(shard=SHARD, groups=[[tenant, "event", NOW, plain], [tenant, "event", NOW, rows]])
    assert (result.applied, result.rejected) == (len(awkward) + 1, 0)
    stored = list(WriteLog.objects.using(SHARD).filter(tenant_id=tenant).order_by("position"))
    assert [w.key for w in stored] == ["plain", *awkward]
    assert [w.payload["text"] for w in stored[1:]] == awkward
    assert stored[1].payload["esc"] == "a\\tb"


def test_group_copy_text_escapes_only_groups_that_need_it():
    day = 20_420  # 2025-11-28, the id_day column
    clean = ["t", "event", NOW, [["id-1", "k", "{}", NOW]]]
    assert group_copy_text(clean, [day]) == f"id-1\tk\t{{}}\t{NOW}\tt\tevent\t{NOW}\t2025-11-28\n"
    dirty = ["t", "event", NOW, [["id-1", "a\tb", "{}", None]]]
    assert group_copy_text(dirty, [day]) == f"id-1\ta\\tb\t{{}}\t\\N\tt\tevent\t{NOW}\t2025-11-28\n"
    mixed = ["t", "event", NOW, [["id-1", "k", "{}", NOW], ["id-2", "k", "{}", NOW]]]
    assert group_copy_text(mixed, [day, day + 1]).splitlines()[1].endswith("\t2025-11-29")
