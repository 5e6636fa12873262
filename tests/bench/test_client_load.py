"""``bench.client_load`` end to end, short: 32 producers through the client against the real API and
worker; what it reports accepted is exactly what the log holds."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tests.client.conftest import wait_for_projections
from tests.conftest import ALL_DATABASES, make_tenant
from tests.edge import shared_server
from tests.stack import ROOT
from writes.models import WriteLog

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)]


def test_client_load_reports_what_the_log_holds(live_worker):
    tenants = [make_tenant("client-load-0", shard="shard_0"), make_tenant("client-load-1", shard="shard_1")]
    spec = {"url": shared_server().url, "api_keys": [t.api_key for t in tenants], "duration": 2.0}
    completed = subprocess.run(
        [sys.executable, "-m", "bench.client_load"],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=ROOT,
    )
    result = json.loads(completed.stdout)

    assert result["producers"] == 32
    assert result["writes_accepted"] > 1000
    assert result["writes_accepted"] == result["writes_captured"]
    assert (result["writes_dropped"], result["errors"]) == (0, {})
    assert sum(result["accepted_timeline"]) == result["writes_accepted"]
    assert result["requests"] < result["writes_accepted"] / 10, "the client did not batch"
    assert 0 < result["capture_call_ms"]["p50"] <= result["capture_call_ms"]["p99"]
    assert 0 < result["latency_ms"]["p50"] <= result["latency_ms"]["p99"]
    assert result["wall_seconds"] >= 2.0

    def rows() -> int:
        return sum(WriteLog.objects.using(t.shard).filter(tenant_id=t.tenant.id).count() for t in tenants)

    deadline = time.monotonic() + 60
    while rows() < result["writes_accepted"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert rows() == result["writes_accepted"]
    wait_for_projections()  # before the databases are truncated (tests/client/conftest.py says why)
