"""Operators' views of the read side: ``writes_status`` and the Django admin pages."""

from __future__ import annotations

import io
import json
import uuid
from datetime import UTC, datetime

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client

from readmodels.projections.events import EventCounts
from readmodels.projector import project_shard
from readmodels.repair import repair_projection
from tests.conftest import ALL_DATABASES
from tests.readmodels.helpers import apply_events

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)

SHARD = "shard_1"


def test_writes_status_shows_head_checkpoint_and_lag_per_shard():
    tenant_id = uuid.uuid4()
    apply_events(SHARD, tenant_id, [("a", datetime(2026, 3, 1, tzinfo=UTC))] * 5)
    project_shard(SHARD)
    apply_events(SHARD, tenant_id, [("a", datetime(2026, 3, 1, tzinfo=UTC))] * 3)  # not projected yet

    out = io.StringIO()
    call_command("writes_status", "--json", stdout=out)
    status = json.loads(out.getvalue())
    shard = {s["shard"]: s for s in status["shards"]}[SHARD]
    assert shard["last_position"] > 0
    assert isinstance(shard["queue_depth"], int)
    counts = {p["projection"]: p for p in shard["projections"]}["event_counts"]
    assert counts["lag_positions"] == 3
    assert counts["checkpoint"] == shard["last_position"] - 3
    assert counts["lag_seconds"] >= 0
    assert counts["last_repair_at"] is None

    repair_projection(shard=SHARD, projection=EventCounts())
    out = io.StringIO()
    call_command("writes_status", "--json", stdout=out)
    shard = {s["shard"]: s for s in json.loads(out.getvalue())["shards"]}[SHARD]
    counts = {p["projection"]: p for p in shard["projections"]}["event_counts"]
    assert counts["last_repair_at"] is not None
    assert counts["last_repair_drift"] == 0

    table = io.StringIO()
    call_command("writes_status", stdout=table)
    assert "event_counts" in table.getvalue()
    assert f"{shard['last_position']:,}" in table.getvalue() or str(shard["last_position"]) in table.getvalue()


def test_admin_shows_read_models_checkpoints_and_repair_runs_read_only():
    tenant_id = uuid.uuid4()
    apply_events(SHARD, tenant_id, [("admin_evt", datetime(2026, 3, 1, tzinfo=UTC))])
    project_shard(SHARD)
    repair_projection(shard=SHARD, projection=EventCounts())
    User.objects.create_superuser("root", "root@example.com", "pw")
    client = Client()
    client.login(username="root", password="pw")
    for model, text in [
        ("eventcounthourly", "admin_evt"),
        ("eventcountdaily", "admin_evt"),
        ("projectioncheckpoint", "event_counts"),
        ("repairrun", "event_counts"),
    ]:
        response = client.get(f"/admin/readmodels/{model}/", {"shard": SHARD})
        assert response.status_code == 200, model
        assert text in response.content.decode(), model
        assert client.get(f"/admin/readmodels/{model}/add/").status_code == 403
