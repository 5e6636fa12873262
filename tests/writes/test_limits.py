"""Limits a client can hit on purpose: the per-tenant rate (429) and a full shard queue (503)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from django.test import override_settings

from api.throttling import TokenBuckets
from tests.conftest import ALL_DATABASES, make_tenant
from tests.edge import api_client
from tests.stack import queue_depth, queues_of_their_own
from writes.queues import all_queues

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)


def test_token_buckets_allow_the_burst_then_refill_at_the_rate():
    buckets = TokenBuckets()
    tenant = uuid.uuid4()
    waits = [buckets.take(tenant, rate=2, burst=3, now=100.0) for _ in range(4)]
    assert waits[:3] == [0, 0, 0]
    assert waits[3] == pytest.approx(0.5)
    assert buckets.take(tenant, rate=2, burst=3, now=100.5) == 0
    assert buckets.take(uuid.uuid4(), rate=2, burst=3, now=100.5) == 0  # another tenant has its own bucket


@override_settings(WRITES_RATE_LIMIT_PER_SECOND=0.5, WRITES_RATE_LIMIT_BURST=3)
def test_tenant_over_its_rate_gets_429_with_retry_after_and_others_do_not():
    noisy, quiet = make_tenant("noisy"), make_tenant("quiet")
    statuses = [noisy.get(f"/api/v1/writes/{uuid.uuid4()}").status_code for _ in range(3)]
    assert statuses == [200, 200, 200]
    for response in [noisy.get(f"/api/v1/writes/{uuid.uuid4()}"), noisy.post_json("/api/v1/events", {"name": "x"})]:
        assert response.status_code == 429
        assert int(response["Retry-After"]) >= 1
        assert response.json()["error"]["code"] == "throttled"
    assert quiet.get(f"/api/v1/writes/{uuid.uuid4()}").status_code == 200


@override_settings(WRITES_RATE_LIMIT_PER_SECOND=0.5, WRITES_RATE_LIMIT_BURST=1)
def test_unknown_keys_get_401_not_429():
    tenant = make_tenant("limited")
    assert tenant.get(f"/api/v1/writes/{uuid.uuid4()}").status_code == 200
    assert tenant.get(f"/api/v1/writes/{uuid.uuid4()}").status_code == 429
    assert api_client(HTTP_AUTHORIZATION="Bearer wk_not-a-key").get(f"/api/v1/writes/{uuid.uuid4()}").status_code == 401


QUEUE_BOUND = 5


@pytest.fixture
def tiny_queues() -> Iterator[None]:
    """Queues of this test's own whose policy holds ``QUEUE_BOUND`` messages."""
    with queues_of_their_own("full", policy=True, WRITES_QUEUE_MAX_LENGTH=QUEUE_BOUND):
        yield


def test_full_shard_queue_answers_503_queue_full_with_retry_after(tiny_queues):
    tenant = make_tenant("flood")
    statuses = []
    # Quorum queues enforce the bound approximately; a few extra messages may get in.
    for _ in range(QUEUE_BOUND + 10):
        response = tenant.post_json("/api/v1/events", {"name": "x"})
        statuses.append(response.status_code)
        if response.status_code != 202:
            break
    assert statuses[:QUEUE_BOUND] == [202] * QUEUE_BOUND
    assert statuses[-1] == 503, statuses
    assert response["Retry-After"] == "1"
    assert response.json()["error"]["code"] == "queue_full"
    # Nothing was dropped to make room: the queue holds every accepted message, and the next write is refused too.
    assert tenant.post_json("/api/v1/events", {"name": "y"}).status_code == 503
    assert queue_depth(next(q for q in all_queues() if q.name.endswith(tenant.shard))) == statuses.count(202)
