"""Structured logs: JSON in production, readable locally, with tenant, shard, write ids and batch sizes,
and never an API key."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import uuid
from datetime import UTC, datetime

import pytest

from tests.conftest import ALL_DATABASES, make_tenant
from tests.stack import ROOT, stack_environment
from writes.logs import JsonFormatter, ReadableFormatter
from writes.tasks import apply_batch_task

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)

NOW = datetime.now(UTC).isoformat()


def test_apply_logs_one_record_per_batch_with_shard_tenant_and_size(caplog):
    tenant = str(uuid.uuid4())
    rows = [[str(uuid.uuid4()), "signup", "{}", NOW] for _ in range(3)] + [[str(uuid.uuid4()), "bad", "{", NOW]]
    with caplog.at_level(logging.INFO, logger="writes"):
        apply_batch_task("shard_1", [[tenant, "event", NOW, rows]])
    applied = next(r for r in caplog.records if r.name == "writes.tasks")
    line = json.loads(JsonFormatter().format(applied))
    assert line["shard"] == "shard_1"
    assert line["tenants"] == [tenant]
    assert (line["batch_size"], line["applied"], line["rejected"]) == (4, 3, 1)
    rejected = next(r for r in caplog.records if r.name == "writes.apply")
    assert json.loads(JsonFormatter().format(rejected))["write_ids"] == [rows[3][0]]
    readable = ReadableFormatter("%(levelname)s %(message)s").format(applied)
    assert readable.startswith("INFO shard shard_1: applied 3 of 4 writes")
    assert "batch_size=4" in readable


def test_request_logs_carry_the_tenant_and_never_the_api_key(caplog, settings):
    tenant = make_tenant("logged")
    with caplog.at_level(logging.DEBUG, logger="writes.intake"):
        response = tenant.post_json("/api/v1/events", {"batch": [{"name": "a"}, {"name": "b"}]})
    assert response.status_code == 202
    record = next(r for r in caplog.records if r.name == "writes.intake")
    line = json.loads(JsonFormatter().format(record))
    assert line["tenant"] == str(tenant.tenant.id)
    assert line["shard"] == tenant.shard
    assert line["write_ids"] == response.json()["ids"]
    # Even a careless log call that includes the key prints it masked.
    careless = logging.LogRecord("x", logging.WARNING, __file__, 1, "key was %s", (tenant.api_key,), None)
    for formatted in (JsonFormatter().format(careless), ReadableFormatter().format(careless)):
        assert tenant.api_key not in formatted
        assert "wk_***" in formatted


def test_production_settings_log_json_lines_and_mask_keys():
    script = (
        "import django, logging; django.setup(); "
        "logging.getLogger('writes.tasks').warning('bad key %s', 'wk_0123456789abcdef', "
        "extra={'shard': 'shard_0', 'batch_size': 2, 'write_ids': ['a', 'b']})"
    )
    environment = {
        **stack_environment(),
        "DJANGO_SETTINGS_MODULE": "config.production",
        "SECRET_KEY": "test-only",
        "ALLOWED_HOSTS": "example.org",
    }
    environment.pop("LOG_FORMAT", None)
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=environment, capture_output=True, text=True, check=True
    )
    line = json.loads(done.stderr.strip().splitlines()[-1])
    assert line["level"] == "WARNING"
    assert line["logger"] == "writes.tasks"
    assert line["message"] == "bad key wk_***"
    assert (line["shard"], line["batch_size"], line["write_ids"]) == ("shard_0", 2, ["a", "b"])
