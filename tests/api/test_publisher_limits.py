"""The edge's publisher: a coalesced message is capped by bytes as well as writes, and a publish that
no queue takes is a 503 (``mandatory``), never a 202 for a dropped message. Each test runs a server of
its own on queues of its own, with no worker, and counts what reached the broker."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from kombu import Connection

from tests.conftest import ALL_DATABASES, make_tenant
from tests.edge import edge_server
from tests.stack import delete_queues

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)


@pytest.fixture
def prefix() -> Iterator[str]:
    own = f"wh.publisher-test.{uuid.uuid4().hex[:8]}"
    yield own
    delete_queues(own)


def messages_in(queue: str) -> int:
    with Connection(settings.CELERY_BROKER_URL) as connection:
        channel: Any = connection.channel()
        declared = channel.queue_declare(queue, passive=True)
        return int(declared[1])


def post_together(client_for: Any, bodies: list[dict[str, Any]]) -> list[int]:
    statuses: list[int] = []
    start = threading.Barrier(len(bodies))

    def post(body: dict[str, Any]) -> None:
        client = client_for()
        start.wait()
        statuses.append(client.post("/api/v1/events", body).status_code)

    threads = [threading.Thread(target=post, args=(body,)) for body in bodies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return statuses


def two_bodies() -> list[dict[str, Any]]:
    return [{"batch": [{"name": "big", "properties": {"text": "x" * 1_500}}]} for _ in range(2)]


@pytest.mark.parametrize(("max_bytes", "messages"), [(10_000_000, 1), (2_500, 2)])
def test_publisher_splits_coalesced_writes_by_bytes(prefix, max_bytes, messages):
    tenant = make_tenant(f"byte-cap-{max_bytes}")
    # A long linger gathers both requests into one message unless the byte cap parts them.
    with edge_server(
        WRITES_QUEUE_PREFIX=prefix, WRITES_PUBLISH_MAX_BYTES=max_bytes, WRITES_PUBLISH_LINGER_SECONDS=0.5
    ) as server:
        statuses = post_together(lambda: server.client(HTTP_AUTHORIZATION=f"Bearer {tenant.api_key}"), two_bodies())
    assert statuses == [202, 202]
    assert messages_in(f"{prefix}.{tenant.shard}") == messages


def test_publish_to_a_deleted_shard_queue_answers_503_with_the_ids(prefix):
    tenant = make_tenant("unroutable")
    with edge_server(WRITES_QUEUE_PREFIX=prefix) as server:
        client = server.client(HTTP_AUTHORIZATION=f"Bearer {tenant.api_key}")
        assert client.post("/api/v1/events", {"name": "first"}).status_code == 202  # the queue is declared
        with Connection(settings.CELERY_BROKER_URL) as connection:
            channel: Any = connection.channel()
            channel.queue_delete(f"{prefix}.{tenant.shard}")
        write_id = str(uuid.uuid4())
        response = client.post("/api/v1/events", {"id": write_id, "name": "lost?"})
    assert response.status_code == 503, response.content
    error = response.json()["error"]
    assert error["code"] == "broker_unavailable"
    assert error["ids"] == [write_id]
    assert response["Retry-After"] == "1"
