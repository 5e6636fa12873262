"""Metrics as an operator scrapes them: the API under gunicorn (two processes, merged) and a real worker."""

from __future__ import annotations

import json
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ALL_DATABASES, make_tenant
from tests.edge import api_client, edge_server
from tests.stack import ApiServer, scrape
from tests.writes.test_e2e_events import wait_until
from writes.models import WriteLog
from writes.operations import CACHE_SECONDS

REQUESTS = 60
PER_REQUEST = 50


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)


def post(url: str, key: str, body: object) -> int:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return int(response.status)


@pytest.mark.e2e
@pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)
def test_metrics_scraped_during_load_move_and_match_the_applied_rows(live_worker):
    tenant = make_tenant("metered")
    api = ApiServer(workers=2)
    try:
        api_before = scrape(f"{api.url}/metrics")
        worker_before = live_worker.metrics()
        ids = [[str(uuid.uuid4()) for _ in range(PER_REQUEST)] for _ in range(REQUESTS)]

        def send(batch: list[str]) -> int:
            return post(
                f"{api.url}/api/v1/events", tenant.api_key, {"batch": [{"id": i, "name": "load"} for i in batch]}
            )

        with ThreadPoolExecutor(max_workers=8) as pool:
            first_half = list(pool.map(send, ids[: REQUESTS // 2]))
            during = scrape(f"{api.url}/metrics")
            second_half = list(pool.map(send, ids[REQUESTS // 2 :]))
        assert set(first_half + second_half) == {202}
        total = REQUESTS * PER_REQUEST
        wait_until(lambda: WriteLog.objects.using(tenant.shard).filter(tenant_id=tenant.tenant.id).count() == total)
        # The worker counts its rows just after COMMIT, and each API process caches its reading of queues
        # and logs for CACHE_SECONDS: scrape until what is read shows the end of the load (the scrape
        # that does is the one checked) rather than sleeping a fixed time.
        last = WriteLog.objects.using(tenant.shard).order_by("-position").values_list("position", flat=True).first()
        scraped: dict[str, str] = {}

        def worker_done() -> bool:
            scraped["worker"] = live_worker.metrics()
            applied = value(scraped["worker"], "writes_rows_applied_total", shard=tenant.shard)
            return applied - value(worker_before, "writes_rows_applied_total", shard=tenant.shard) >= total

        def api_caught_up() -> bool:
            scraped["api"] = scrape(f"{api.url}/metrics")
            return value(scraped["api"], "writes_log_last_position", shard=tenant.shard) == last and (
                value(scraped["api"], "writes_queue_depth", shard=tenant.shard) == 0
            )

        wait_until(worker_done)
        wait_until(api_caught_up, timeout=CACHE_SECONDS * 10 + 10)
        api_after, worker_after = scraped["api"], scraped["worker"]
    finally:
        api.stop()

    # Counters move during the load and end at what was sent, merged over both gunicorn processes.
    accepted = [value(t, "writes_accepted_total", kind="event") for t in (api_before, during, api_after)]
    assert accepted[0] < accepted[1] < accepted[2]
    assert accepted[2] - accepted[0] == total
    answered = value(api_after, "writes_http_requests_total", endpoint="events", method="POST", status="202")
    assert (
        answered - value(api_before, "writes_http_requests_total", endpoint="events", method="POST", status="202")
        == REQUESTS
    )
    assert value(api_after, "writes_accept_seconds_count", kind="event") >= REQUESTS
    assert value(api_after, "writes_publish_confirm_seconds_count") > 0
    assert (
        value(api_after, "writes_publish_writes_per_message_sum")
        - value(api_before, "writes_publish_writes_per_message_sum")
        == total
    )

    # The worker applied exactly what the log holds.
    applied = value(worker_after, "writes_rows_applied_total", shard=tenant.shard) - value(
        worker_before, "writes_rows_applied_total", shard=tenant.shard
    )
    assert applied == total
    assert value(worker_after, "writes_apply_batch_size_count", shard=tenant.shard) > value(
        worker_before, "writes_apply_batch_size_count", shard=tenant.shard
    )
    assert value(worker_after, "writes_apply_seconds_count", shard=tenant.shard) > 0

    # System figures are computed at scrape time: the queue is drained, the log's last position is known.
    assert value(api_after, "writes_queue_depth", shard=tenant.shard) == 0
    assert value(api_after, "writes_queue_consumers", shard=tenant.shard) >= 1
    assert value(api_after, "writes_queue_seconds_to_drain", shard=tenant.shard) == 0
    assert value(api_after, "writes_log_last_position", shard=tenant.shard) == last
    assert value(api_after, "writes_apply_rate_rows_per_second", shard=tenant.shard) > 0


@pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)
def test_metrics_count_503_refusals_by_code():
    tenant = make_tenant("refused")
    refused = {"status": "503", "code": "broker_unavailable"}
    before = value(api_client().get("/metrics").content.decode(), "writes_http_refused_total", **refused)
    with edge_server(CELERY_BROKER_URL="amqp://guest:guest@127.0.0.1:1//") as server:
        client = server.client(HTTP_AUTHORIZATION=f"Bearer {tenant.api_key}")
        assert client.post("/api/v1/events", {"name": "x"}).status_code == 503
    text = api_client().get("/metrics").content.decode()
    assert value(text, "writes_http_refused_total", **refused) == before + 1
    assert value(text, "writes_http_requests_total", endpoint="events", method="POST", status="503") >= 1
