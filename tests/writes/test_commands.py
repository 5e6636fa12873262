from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from tests.conftest import ALL_DATABASES
from tests.stack import ROOT
from writes.models import Tenant
from writes.services import tenant_for_api_key

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)


def test_create_tenant_json_prints_exactly_one_line_with_a_working_key():
    out = StringIO()
    call_command("create_tenant", "acme", "--json", stdout=out)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    created = json.loads(lines[0])
    assert set(created) == {"tenant_id", "api_key", "shard"}
    context = tenant_for_api_key(created["api_key"])
    assert context is not None
    assert str(context.tenant_id) == created["tenant_id"]
    assert context.shard == created["shard"]
    assert Tenant.objects.get(pk=created["tenant_id"]).name == "acme"


def test_create_tenant_refuses_a_duplicate_name():
    call_command("create_tenant", "acme", stdout=StringIO())
    with pytest.raises(CommandError, match="already exists"):
        call_command("create_tenant", "acme", stdout=StringIO())


def run_manage(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_prepare_databases_names_the_service_that_does_not_answer_and_how_to_start_it():
    no_postgres = run_manage("prepare_databases", DATABASE_URL="postgres://postgres@127.0.0.1:1/writes_control")
    assert no_postgres.returncode != 0
    assert "PostgreSQL does not answer at 127.0.0.1:1" in no_postgres.stderr
    assert "pg_ctlcluster" in no_postgres.stderr
    no_broker = run_manage("prepare_databases", CELERY_BROKER_URL="amqp://guest:guest@127.0.0.1:1//")
    assert no_broker.returncode != 0
    assert "RabbitMQ does not answer at amqp://***@127.0.0.1:1//" in no_broker.stderr
    assert "rabbitmq-server -detached" in no_broker.stderr


def test_prepare_databases_with_wait_keeps_retrying_a_server_that_does_not_answer_until_the_deadline():
    started = time.monotonic()
    waited = run_manage("prepare_databases", "--wait", "3", CELERY_BROKER_URL="amqp://guest:guest@127.0.0.1:1//")
    assert waited.returncode != 0
    assert time.monotonic() - started >= 3
    assert waited.stderr.count("Retrying.") >= 1
    assert "RabbitMQ does not answer" in waited.stderr
