"""The ``bench`` command end to end, tiny: it starts its own stack, measures, checks counts, writes files.

Real measurements are never a test; this only proves the tooling works from a clean state.
"""

from __future__ import annotations

import json

import pytest
from django.conf import settings
from django.core.management import call_command

pytestmark = pytest.mark.e2e

SCENARIOS = ["naive", "batched", "copy_limit", "worker_limit", "chat_single_max", "ledger"]


def test_bench_runs_scenarios_and_writes_json_and_plot(tmp_path):
    call_command(
        "bench",
        duration=2,
        scenarios=",".join(SCENARIOS),
        # Databases and queues of the bench's own, apart from the suite's and any developer's.
        db_prefix=f"{settings.DATABASES['default']['NAME']}_bench",
        queue_prefix=f"{settings.WRITES_QUEUE_PREFIX}.bench",
        output_dir=tmp_path,
        stdout=open(tmp_path / "out.txt", "w"),  # noqa: SIM115
    )
    [json_path] = tmp_path.glob("*.json")
    [plot_path] = tmp_path.glob("*.png")
    assert plot_path.read_bytes().startswith(b"\x89PNG")
    document = json.loads(json_path.read_text())
    results = {r["name"]: r for r in document["scenarios"]}
    assert list(results) == SCENARIOS
    for result in results.values():
        assert result["failure"] is None, result["failure"]
        assert result["applied_writes_per_s"] > 0
    batched = results["batched"]
    # Every accepted write is in the log once, counted in the shard databases.
    assert batched["writes_accepted"] >= 1000
    assert batched["rows_applied"] == batched["writes_accepted"]
    assert (batched["not_applied_after_drain"], batched["duplicates"]) == (0, 0)
    assert batched["http_latency_ms"]["p99"] > 0
    assert batched["peak_rss_mb"]["api"] > 0
    assert batched["peak_rss_mb"]["worker"] > 0
    assert batched["lag_applied_s"]["rows"] == batched["rows_applied"]
    assert results["naive"]["rows_applied"] == results["naive"]["writes_accepted"] > 0
    assert {t["target"] for t in document["targets"]} >= {"batched / naive applied", "batched / copy_limit applied"}
    assert {t["target"] for t in document["targets"]} >= {
        "worker CPU per applied write in single (ms)",
        "ledger applied transfers/s (1,000-transfer requests)",
    }
    # The workers alone, chat and the ledger: nothing lost or applied twice; the ledger's invariants hold.
    for name in ("worker_limit", "chat_single_max", "ledger"):
        result = results[name]
        assert result["writes_accepted"] > 0
        assert result["rows_applied"] + result["rows_rejected"] == result["writes_accepted"], name
        assert (result["not_applied_after_drain"], result["duplicates"]) == (0, 0), name
        assert result["cpu_ms_per_write"]["worker"] > 0, name
    assert results["ledger"]["ledger_violations"] == 0
    assert results["chat_single_max"]["lag_visible_s"]["rows"] > 0
