"""The client library against the real API, RabbitMQ, Celery worker and shards: what it sends is
applied once, with the ids it gave; what the API refuses is reported, not retried forever."""

from __future__ import annotations

import asyncio
import gzip
import time

import httpx
import pytest
from writes_client import AsyncClient, Client, Dropped

from tests.conftest import ALL_DATABASES, TenantHandle, make_tenant
from tests.edge import edge_server, shared_server
from writes.models import WriteLog

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)]


def log_ids(tenant: TenantHandle) -> list[str]:
    rows = WriteLog.objects.using(tenant.shard).filter(tenant_id=tenant.tenant.id)
    return [str(write_id) for write_id in rows.values_list("write_id", flat=True)]


class Recorder(httpx.BaseTransport):
    """The real HTTP transport, noting each request's path and headers on the way."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.requests: list[httpx.Request] = []
        self.exchanges: list[
            tuple[float, float, bytes, int, str | None]
        ] = []  # sent, answered, body, status, Retry-After

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        sent = time.monotonic()
        response = self.inner.handle_request(request)
        self.exchanges.append(
            (sent, time.monotonic(), request.content, response.status_code, response.headers.get("retry-after"))
        )
        return response


def test_client_events_are_applied_once_with_the_ids_it_answered_in_gzipped_batches(live_worker):
    tenant = make_tenant("client-events")
    recorder = Recorder()
    with Client(shared_server().url, tenant.api_key, max_batch=100, transport=recorder) as client:
        ids = [client.capture_event("page_view", distinct_id=f"u{n}", properties={"n": n}) for n in range(250)]
        statuses = client.wait_applied(ids, timeout=30)
        stats = client.stats()

    assert {s.status for s in statuses.values()} == {"applied"}
    assert sorted(log_ids(tenant)) == sorted(ids)
    assert (stats.captured, stats.accepted, stats.dropped) == (250, 250, 0)
    posts = [r for r in recorder.requests if r.method == "POST"]
    assert len(posts) == 3  # 100 + 100 + 50
    assert {r.headers.get("content-encoding") for r in posts} == {"gzip"}


def test_client_messages_keep_their_order_per_conversation_and_transfers_apply(live_worker):
    """A batch is applied in the order it was captured. Across requests the API promises no order (two
    workers may apply two messages of one queue in either order), so a spend waits for its funding."""
    tenant = make_tenant("client-chat-ledger")
    for account in ({"id": "equity", "currency": "EUR"}, {"id": "alice", "currency": "EUR", "no_overdraft": True}):
        assert tenant.post_json("/api/v1/ledger/accounts", account).status_code == 201
    with Client(shared_server().url, tenant.api_key, max_batch=100, flush_interval=5, senders=4) as client:
        messages = {
            room: [client.send_message(room, sender_id="ann", body=f"{room} #{n}") for n in range(30)]
            for room in ("room-1", "salle n°2 ?")  # quoted in the path
        }
        fund = client.transfer(debit_account="equity", credit_account="alice", amount=500, currency="EUR")
        statuses = client.wait_applied([*messages["room-1"], *messages["salle n°2 ?"], fund], timeout=30)
        spend = client.transfer(debit_account="alice", credit_account="equity", amount=300, currency="EUR")
        statuses.update(client.wait_applied([spend], timeout=30))

    assert {s.status for s in statuses.values()} == {"applied"}
    for ids in messages.values():
        positions = [statuses[write_id].position or 0 for write_id in ids]
        assert positions == sorted(positions), "a conversation's messages were applied out of order"
    deadline = time.monotonic() + 30
    while tenant.get("/api/v1/ledger/accounts/alice").json()["balance"] != 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert tenant.get("/api/v1/ledger/accounts/alice").json()["balance"] == 200


def test_client_drops_only_the_items_the_api_names_invalid_and_sends_the_rest(live_worker):
    tenant = make_tenant("client-invalid")
    dropped: list[Dropped] = []
    with Client(shared_server().url, tenant.api_key, on_drop=dropped.append) as client:
        good = [client.capture_event("ok", properties={"n": n}) for n in range(20)]
        bad = client.capture_event("x" * 201)  # longer than the API's 200 characters
        good += [client.capture_event("ok", properties={"n": n}) for n in range(20, 40)]
        nul = client.capture_event("nul", properties={"text": "a\x00b"})  # refused at capture, never sent
        statuses = client.wait_applied(good, timeout=30)

    assert {s.status for s in statuses.values()} == {"applied"}
    assert sorted(log_ids(tenant)) == sorted(good)
    assert [(d.reason, d.ids, d.status) for d in dropped] == [("invalid", [nul], None), ("invalid", [bad], 400)]


def test_client_retries_429_after_retry_after_with_the_same_ids(live_worker):
    tenant = make_tenant("client-throttled")
    recorder = Recorder()
    with (
        edge_server(WRITES_RATE_LIMIT_PER_SECOND=1, WRITES_RATE_LIMIT_BURST=1) as server,
        Client(server.url, tenant.api_key, max_batch=10, transport=recorder) as client,
    ):
        ids = [client.capture_event("throttled", properties={"n": n}) for n in range(30)]
        assert client.flush(timeout=30)
        stats = client.stats()

    assert stats.accepted == 30
    throttled = [e for e in recorder.exchanges if e[3] == 429]
    assert throttled, "the API never answered 429"
    assert stats.retries == len(throttled)
    for _, answered, body, _, retry_after in throttled:
        assert retry_after is not None
        again = next(e for e in recorder.exchanges if e[0] > answered and e[2] == body)
        assert again[0] - answered >= float(retry_after), "a retry came sooner than Retry-After allowed"
    bodies = [gzip.decompress(r.content) if r.headers.get("content-encoding") else r.content for r in recorder.requests]
    sent_ids = [write_id for body in bodies for write_id in ids if write_id.encode() in body]
    assert set(sent_ids) == set(ids)
    assert len(sent_ids) > len(ids)  # retried, and only ever with these ids
    deadline = time.monotonic() + 30
    while sorted(log_ids(tenant)) != sorted(ids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sorted(log_ids(tenant)) == sorted(ids)


def test_client_halves_a_batch_the_api_finds_too_large_once_inflated(live_worker):
    """The API limits the body after inflating it: a gzipped batch that inflates past the limit is a
    413, and the client splits it until each part fits."""
    tenant = make_tenant("client-split")
    filler = "y" * 2000
    with edge_server(WRITES_MAX_BODY_BYTES=64 * 1024) as server:
        recorder = Recorder()
        with Client(server.url, tenant.api_key, max_batch=100, transport=recorder) as client:
            ids = [client.capture_event("big", properties={"filler": filler, "n": n}) for n in range(100)]
            assert client.flush(timeout=30)
            stats = client.stats()
    assert stats.accepted == 100
    assert stats.dropped == 0
    sizes = [len(r.content) for r in recorder.requests]
    assert sizes[0] < 64 * 1024, "the first body was small on the wire; only inflated was it too large"
    assert len(recorder.requests) > 2
    deadline = time.monotonic() + 30
    while len(log_ids(tenant)) < 100 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sorted(log_ids(tenant)) == sorted(ids)


def test_api_refuses_a_gzip_bomb_and_broken_gzip(live_worker):
    tenant = make_tenant("client-gzip")
    headers = {"authorization": f"Bearer {tenant.api_key}", "content-type": "application/json"}
    bomb = gzip.compress(b'{"batch":[' + b" " * (64 * 1024 * 1024) + b"]}", compresslevel=9)
    with httpx.Client(base_url=shared_server().url, timeout=30) as http:
        too_large = http.post("/api/v1/events", content=bomb, headers={**headers, "content-encoding": "gzip"})
        broken = http.post("/api/v1/events", content=bomb[:100], headers={**headers, "content-encoding": "gzip"})
    assert len(bomb) < 100_000
    assert too_large.status_code == 413
    assert too_large.json()["error"]["code"] == "payload_too_large"
    assert broken.status_code == 400
    assert broken.json()["error"]["code"] == "malformed_gzip"


def test_async_client_captures_flushes_and_reads_its_own_writes(live_worker):
    tenant = make_tenant("client-async")

    async def run() -> tuple[list[str], dict[str, str]]:
        async with AsyncClient(shared_server().url, tenant.api_key, max_batch=50) as client:
            ids = [await client.capture_event("async", properties={"n": n}) for n in range(120)]
            ids.append(await client.send_message("async-room", sender_id="bob", body="hi"))
            statuses = await client.wait_applied(ids, timeout=30)
        return ids, {write_id: s.status for write_id, s in statuses.items()}

    ids, statuses = asyncio.run(run())
    assert set(statuses.values()) == {"applied"}
    assert sorted(log_ids(tenant)) == sorted(ids)
