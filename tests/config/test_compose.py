"""docker-compose.yml checked without Docker: the file is loaded and the properties the topology relies on
are asserted (a fixed hostname per broker node, health checks over TCP, a key that survives, ...)."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import pytest
import yaml

from tests.stack import ROOT


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def services(compose: dict[str, Any], prefix: str) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose["services"].items() if name.startswith(prefix)}


def healthcheck_text(service: dict[str, Any]) -> str:
    test = service["healthcheck"]["test"]
    return " ".join(test) if isinstance(test, list) else str(test)


def test_compose_broker_is_three_nodes_each_with_a_fixed_hostname_and_its_own_volume(compose):
    nodes = services(compose, "rabbitmq")
    assert len(nodes) == 3
    assert {s["hostname"] for s in nodes.values()} == set(nodes)  # data lives under rabbit@<hostname>
    volumes = [s["volumes"][0].split(":")[0] for s in nodes.values()]
    assert len(set(volumes)) == 3
    cluster = compose["configs"]["rabbitmq-cluster"]["content"]
    assert all(f"rabbit@{name}" in cluster for name in nodes)
    assert all("RABBITMQ_ERLANG_COOKIE" in s["environment"] for s in nodes.values())
    env = compose["x-app"]["environment"]
    assert [url.split("@")[1].split(":")[0] for url in env["CELERY_BROKER_URL"].split(";")] == sorted(nodes)
    assert env["WRITES_QUEUE_REPLICAS"] == "3"


def test_compose_management_port_does_not_clash_with_a_local_broker(compose):
    published = [p for s in compose["services"].values() for p in s.get("ports", [])]
    hosts = [p.rsplit(":", 1)[0] for p in published]
    assert not any(h.endswith((":15672", ":5672", ":5432")) for h in hosts), published
    assert len(hosts) == len(set(hosts))


def test_compose_postgres_health_is_checked_over_tcp(compose):
    for name, service in services(compose, "db-").items():
        check = healthcheck_text(service)
        assert "pg_isready" in check, name
        assert "-h 127.0.0.1" in check, (name, check)


def test_compose_shard_1_has_a_synchronous_standby_and_its_url_names_both_servers(compose):
    primary = compose["services"]["db-shard1"]["command"]
    assert "synchronous_standby_names=ANY 1 (db_shard1_standby)" in primary
    standby = " ".join(compose["services"]["db-shard1-standby"]["command"])
    assert "pg_basebackup" in standby
    assert " -R " in standby
    assert "cluster_name=db_shard1_standby" in standby
    shard_1 = compose["x-app"]["environment"]["SHARD_DATABASE_URLS"].split(",", 1)[1]
    assert "db-shard1:5432,db-shard1-standby:5432" in shard_1
    assert "target_session_attrs=read-write" in shard_1


def test_compose_secret_key_never_aborts_a_command_and_is_kept_in_a_volume(compose):
    text = (ROOT / "docker-compose.yml").read_text()
    assert ":?" not in text  # ${VAR:?} aborts every compose command, `run` and `down` included
    env = compose["x-app"]["environment"]
    assert env["SECRET_KEY"] == "${SECRET_KEY:-}"
    assert env["SECRET_KEY_FILE"].startswith("/run/writes-secrets/")
    assert "secret" in compose["x-app"]["depends_on"]
    assert "secrets" in compose["volumes"]


def test_compose_migrate_waits_for_the_servers_and_retries(compose):
    migrate = compose["services"]["migrate"]
    assert "prepare_databases --wait" in migrate["command"]
    assert migrate["restart"] == "on-failure"


def test_compose_app_services_have_healthchecks_grace_periods_and_reachable_worker_metrics(compose):
    for name in ("api", "worker", "beat"):
        assert "healthcheck" in compose["services"][name], name
        assert "stop_grace_period" in compose["services"][name], name
    # The longest long-poll is ?wait=30: a graceful stop must outlast it.
    assert int(compose["services"]["api"]["stop_grace_period"].rstrip("s")) > 30
    worker = compose["services"]["worker"]
    assert worker["environment"]["WORKER_METRICS_ADDR"] == "0.0.0.0"
    assert worker["environment"]["WORKER_METRICS_PORT"] in worker["expose"]
    assert worker["environment"]["WORKER_METRICS_PORT"] in healthcheck_text(worker)


@pytest.mark.skipif(
    shutil.which("docker") is None
    or subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0,
    reason="docker compose is not installed",
)
def test_compose_config_is_accepted_by_docker_compose():
    result = subprocess.run(["docker", "compose", "config", "--quiet"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
