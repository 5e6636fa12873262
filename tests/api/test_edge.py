"""The edge under the conditions it exists for: a tenant holding a thousand long-polls, a revoked key,
a broker whose confirms come too late. Each runs the API as production does (``serve_api``: uvicorn,
two processes) or in process where a test must change its broker."""

from __future__ import annotations

import asyncio
import http.client
import json
import statistics
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.conftest import ALL_DATABASES, TenantHandle, make_tenant
from tests.edge import edge_server
from tests.stack import ApiServer
from writes.models import ApiKey, WriteLog
from writes.services import api_key_revoke

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)]

WAITERS = 1_000
WRITER_REQUESTS = 300


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


async def _hold_and_write(api: ApiServer, waiter: TenantHandle, writer: TenantHandle) -> dict[str, Any]:
    ids = [str(uuid.uuid4()) for _ in range(WAITERS)]
    async with httpx.AsyncClient(base_url=api.url, timeout=60) as client:
        waiter_headers = {"Authorization": f"Bearer {waiter.api_key}"}
        writer_headers = {"Authorization": f"Bearer {writer.api_key}"}

        async def wait_for(write_id: str) -> tuple[int, dict[str, Any], float]:
            # Plain sockets: a thousand connections through an HTTP client library would cost this
            # process more time than the server needs to answer them.
            reader, writer = await asyncio.open_connection("127.0.0.1", api.port)
            writer.write(
                f"GET /api/v1/writes/{write_id}?wait=25 HTTP/1.1\r\nHost: api\r\n"
                f"Authorization: Bearer {waiter.api_key}\r\nConnection: close\r\n\r\n".encode()
            )
            answer = await reader.read()
            answered = time.time()
            writer.close()
            head, _, body = answer.partition(b"\r\n\r\n")
            return int(head.split(b" ")[1]), json.loads(body), answered

        polls = [asyncio.create_task(wait_for(write_id)) for write_id in ids]
        await asyncio.sleep(2.0)  # every long-poll is in and waiting
        assert not any(poll.done() for poll in polls), "long-polls answered before their writes existed"

        latencies: list[float] = []
        statuses: list[int] = []
        for n in range(WRITER_REQUESTS):
            started = time.monotonic()
            response = await client.post(
                "/api/v1/events", json={"name": "meanwhile", "properties": {"n": n}}, headers=writer_headers
            )
            latencies.append(time.monotonic() - started)
            statuses.append(response.status_code)

        # Now the waiters' writes arrive; every long-poll must come back with them applied.
        for start in range(0, WAITERS, 250):
            batch = [{"id": write_id, "name": "awaited"} for write_id in ids[start : start + 250]]
            response = await client.post("/api/v1/events", json={"batch": batch}, headers=waiter_headers)
            assert response.status_code == 202, response.text
        answers = await asyncio.gather(*polls)
    return {"latencies": latencies, "statuses": statuses, "answers": answers, "ids": ids}


def test_a_thousand_long_polls_of_one_tenant_do_not_slow_another_tenants_writes(live_worker):
    waiter, writer = make_tenant("waiter"), make_tenant("writer")
    api = ApiServer(workers=2)
    try:
        outcome = asyncio.run(_hold_and_write(api, waiter, writer))
    finally:
        api.stop()
    latencies = outcome["latencies"]
    assert outcome["statuses"] == [202] * WRITER_REQUESTS
    p99 = percentile(latencies, 0.99)
    assert p99 < 0.100, f"writer p99 {p99 * 1000:.1f} ms (median {statistics.median(latencies) * 1000:.1f} ms)"
    answers = outcome["answers"]
    assert [status for status, _, _ in answers] == [200] * WAITERS
    assert {body["status"] for _, body, _ in answers} == {"applied"}
    assert sorted(body["id"] for _, body, _ in answers) == sorted(outcome["ids"])
    # Woken by the applier's notification, not by their timeout: each answered soon after its write
    # was applied.
    applied = dict(
        WriteLog.objects.using(waiter.shard).filter(tenant_id=waiter.tenant.id).values_list("write_id", "applied_at")
    )
    late = max(answered - applied[uuid.UUID(body["id"])].timestamp() for _, body, answered in answers)
    assert late < 2.0, f"a long-poll came back {late:.2f} s after its write was applied"


def _status_on_fresh_connection(api: ApiServer, api_key: str) -> int:
    """One request on a new connection, so that each lands on whichever API process accepts it."""
    connection = http.client.HTTPConnection("127.0.0.1", api.port, timeout=5)
    try:
        connection.request(
            "GET",
            f"/api/v1/writes/{uuid.uuid4()}",
            headers={"Authorization": f"Bearer {api_key}", "Connection": "close"},
        )
        return connection.getresponse().status
    finally:
        connection.close()


def test_a_revoked_key_is_refused_by_every_api_process_within_a_second():
    tenant = make_tenant("revoked")
    api = ApiServer(workers=2)
    try:
        # Every process caches the key (many requests on fresh connections reach both).
        assert {_status_on_fresh_connection(api, tenant.api_key) for _ in range(60)} == {200}
        api_key_revoke(api_key=ApiKey.objects.get(tenant=tenant.tenant))
        revoked_at = time.monotonic()
        refused_after: float | None = None
        while time.monotonic() - revoked_at < 3.0:
            statuses = {_status_on_fresh_connection(api, tenant.api_key) for _ in range(20)}
            if statuses == {401}:
                refused_after = time.monotonic() - revoked_at
                break
        # Stays refused on every later request, whichever process answers.
        later = {_status_on_fresh_connection(api, tenant.api_key) for _ in range(60)}
    finally:
        api.stop()
    assert refused_after is not None, "the revoked key still worked 3 s later"
    assert refused_after < 1.0, f"refused only after {refused_after:.2f} s"
    assert later == {401}


def test_a_tenant_over_its_waits_gets_429_and_another_tenant_still_waits():
    greedy, other = make_tenant("greedy"), make_tenant("other")
    with edge_server(EDGE_MAX_WAITS_PER_TENANT=3) as server:
        greedy_client = server.client(HTTP_AUTHORIZATION=f"Bearer {greedy.api_key}")
        other_client = server.client(HTTP_AUTHORIZATION=f"Bearer {other.api_key}")

        def long_poll(client: Any) -> Any:
            return client.get(f"/api/v1/writes/{uuid.uuid4()}", {"wait": "3"})

        with ThreadPoolExecutor(max_workers=3) as pool:
            held = [
                pool.submit(long_poll, server.client(HTTP_AUTHORIZATION=f"Bearer {greedy.api_key}")) for _ in range(3)
            ]
            time.sleep(0.5)  # the three are waiting
            refused = long_poll(greedy_client)
            refused_read = greedy_client.get("/api/v1/stats/events", {"min_position": "999999", "wait": "3"})
            started = time.monotonic()
            allowed = other_client.get(f"/api/v1/writes/{uuid.uuid4()}", {"wait": "0.5"})
            other_waited = time.monotonic() - started
            answers = [future.result() for future in held]
    assert refused.status_code == 429
    assert refused["Retry-After"] == "1"
    assert refused.json()["error"]["code"] == "too_many_waits"
    assert refused_read.status_code == 429
    assert allowed.status_code == 200
    assert allowed.json()["status"] == "pending"
    assert other_waited >= 0.5
    assert [answer.json()["status"] for answer in answers] == ["pending"] * 3
