"""The edge's publisher over several broker nodes: nodes that do not answer are passed over, and a write
is answered 202 once a node that answers confirmed it."""

from __future__ import annotations

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
    own = f"wh.failover-test.{uuid.uuid4().hex[:8]}"
    yield own
    delete_queues(own)


def test_edge_publishes_through_the_first_broker_node_that_answers(prefix):
    tenant = make_tenant("failover")
    nodes = ["amqp://guest:guest@127.0.0.1:1//", "amqp://guest:guest@127.0.0.1:2//", settings.CELERY_BROKER_URL]
    with edge_server(WRITES_QUEUE_PREFIX=prefix, CELERY_BROKER_URL=";".join(nodes)) as server:
        client = server.client(HTTP_AUTHORIZATION=f"Bearer {tenant.api_key}")
        statuses = [client.post("/api/v1/events", {"name": f"e{n}"}).status_code for n in range(3)]
    assert statuses == [202, 202, 202]
    with Connection(settings.CELERY_BROKER_URL) as connection:
        channel: Any = connection.channel()
        assert int(channel.queue_declare(f"{prefix}.{tenant.shard}", passive=True)[1]) >= 1


def test_edge_answers_503_when_no_broker_node_answers(prefix):
    tenant = make_tenant("no-node")
    nodes = ["amqp://guest:guest@127.0.0.1:1//", "amqp://guest:guest@127.0.0.1:2//"]
    with edge_server(WRITES_QUEUE_PREFIX=prefix, CELERY_BROKER_URL=";".join(nodes)) as server:
        client = server.client(HTTP_AUTHORIZATION=f"Bearer {tenant.api_key}")
        answer = client.post("/api/v1/events", {"name": "nowhere"})
    assert answer.status_code == 503
    assert answer.headers.get("Retry-After")
