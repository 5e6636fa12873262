"""Each broker node and each shard server with its role, as ``writes_status`` shows them."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.conf import settings
from django.core.management import call_command
from django.test import override_settings

from config.settings import database
from tests.conftest import ALL_DATABASES
from writes.topology import broker_node_roles, shard_server_roles


def test_broker_node_roles_name_each_node_without_credentials():
    nodes = ["amqp://guest:guest@127.0.0.1:1//", settings.CELERY_BROKER_URL]
    with override_settings(CELERY_BROKER_URL=";".join(nodes)):
        roles = broker_node_roles()
    assert [r.role for r in roles] == ["unreachable", "up"]
    assert roles[0].server == "amqp://***@127.0.0.1:1//"


def test_shard_server_roles_ask_every_server_a_multi_host_url_names(monkeypatch):
    config = database("postgres://postgres@127.0.0.1:1,127.0.0.1:5432/postgres?target_session_attrs=read-write")
    monkeypatch.setitem(settings.DATABASES, "two_servers", config)
    roles = shard_server_roles("two_servers")
    assert [(r.server, r.role) for r in roles] == [("127.0.0.1:1", "unreachable"), ("127.0.0.1:5432", "primary")]


@pytest.mark.django_db(databases=ALL_DATABASES)
def test_writes_status_json_lists_broker_nodes_and_shard_servers():
    output = StringIO()
    call_command("writes_status", "--json", stdout=output)
    figures = json.loads(output.getvalue())
    assert [n["role"] for n in figures["broker_nodes"]] == ["up"]
    assert set(figures["shard_servers"]) == set(settings.SHARD_ALIASES)
    assert all(s["role"] == "primary" for servers in figures["shard_servers"].values() for s in servers)


@pytest.mark.django_db(databases=ALL_DATABASES)
def test_operations_data_carries_broker_nodes_and_shard_servers():
    from writes.operations import collect_overview, overview_as_dict

    data = overview_as_dict(collect_overview())
    assert [n["role"] for n in data["broker_nodes"]] == ["up"]
    assert {alias: [s["role"] for s in servers] for alias, servers in data["shard_servers"].items()} == {
        alias: ["primary"] for alias in settings.SHARD_ALIASES
    }
