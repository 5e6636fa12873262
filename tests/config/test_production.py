"""Production settings: TLS, cookies and origins from the environment, and the image that uses them."""

from __future__ import annotations

import json
import os
import runpy
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.stack import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def production_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.setenv("SECRET_KEY", "s" * 50)
    monkeypatch.setenv("ALLOWED_HOSTS", "api.example.com")
    for name in [
        "DEBUG",
        "SECURE_SSL_REDIRECT",
        "SECURE_HSTS_SECONDS",
        "TRUST_X_FORWARDED_PROTO",
        "CSRF_TRUSTED_ORIGINS",
        "SESSION_COOKIE_SECURE",
        "CSRF_COOKIE_SECURE",
    ]:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_production_settings_default_to_tls_hsts_and_secure_cookies(production_environment):
    production = runpy.run_module("config.production")
    assert production["SECURE_SSL_REDIRECT"] is True
    assert production["SECURE_HSTS_SECONDS"] >= 31_536_000
    assert production["SESSION_COOKIE_SECURE"] is True
    assert production["CSRF_COOKIE_SECURE"] is True
    assert "SECURE_PROXY_SSL_HEADER" not in production  # a client must not be able to claim https
    assert production["CSRF_TRUSTED_ORIGINS"] == []


def test_production_settings_take_proxy_origins_and_plain_http_from_the_environment(production_environment):
    production_environment.setenv("TRUST_X_FORWARDED_PROTO", "1")
    production_environment.setenv("CSRF_TRUSTED_ORIGINS", "https://admin.example.com, https://ops.example.com")
    production_environment.setenv("SECURE_SSL_REDIRECT", "0")
    production_environment.setenv("SECURE_HSTS_SECONDS", "0")
    production = runpy.run_module("config.production")
    assert production["SECURE_PROXY_SSL_HEADER"] == ("HTTP_X_FORWARDED_PROTO", "https")
    assert production["CSRF_TRUSTED_ORIGINS"] == ["https://admin.example.com", "https://ops.example.com"]
    assert (production["SECURE_SSL_REDIRECT"], production["SECURE_HSTS_SECONDS"]) == (False, 0)


def test_docker_image_starts_with_production_settings():
    dockerfile = (ROOT / "Dockerfile").read_text()
    env_lines = [line for line in dockerfile.splitlines() if line.startswith("ENV ")]
    assert any("DJANGO_SETTINGS_MODULE=config.production" in line for line in env_lines)


def test_production_secret_key_is_read_from_secret_key_file_when_the_variable_is_empty(
    production_environment, tmp_path
):
    key_file = tmp_path / "secret_key"
    key_file.write_text("k" * 64 + "\n")
    production_environment.setenv("SECRET_KEY", "")
    production_environment.setenv("SECRET_KEY_FILE", str(key_file))
    assert runpy.run_module("config.production")["SECRET_KEY"] == "k" * 64
    production_environment.setenv("SECRET_KEY_FILE", str(tmp_path / "missing"))
    with pytest.raises(Exception, match="SECRET_KEY"):
        runpy.run_module("config.production")


def _image() -> tuple[dict[str, str], list[str]]:
    """The environment the Dockerfile's ENV lines give and its CMD."""
    environment: dict[str, str] = {}
    command: list[str] = []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("ENV "):
            environment.update(tuple(pair.split("=", 1)) for pair in line[4:].split())  # type: ignore[misc]
        elif line.startswith("CMD "):
            command = json.loads(line[4:])
    return environment, command


def test_the_image_command_runs_with_production_settings_and_refuses_to_start_without_secrets():
    environment, command = _image()
    assert command[:3] == ["python", "manage.py", "serve_api"]
    port = str(free_port())  # should it start after all, it must not take anyone's port 8000
    command = [sys.executable, *command[1:]]
    command = [port if part == "8000" else ("127.0.0.1" if part == "0.0.0.0" else part) for part in command]
    unset = {"SECRET_KEY", "SECRET_KEY_FILE", "ALLOWED_HOSTS", "DJANGO_SETTINGS_MODULE"}
    base = {k: v for k, v in os.environ.items() if k not in unset}
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env={**base, **environment},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # uvicorn's children too can be stopped at once
    )
    try:
        output, _ = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"the image's command started without SECRET_KEY (not production settings):\n{output[-2000:]}")
    assert process.returncode != 0
    assert "must be set in production" in output


def test_every_compose_service_of_the_image_runs_with_production_settings():
    yaml = pytest.importorskip("yaml")
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    of_the_image = {name: service for name, service in compose["services"].items() if "build" in service}
    assert {"migrate", "api", "worker", "beat"} <= set(of_the_image)
    for name, service in of_the_image.items():
        assert service["environment"]["DJANGO_SETTINGS_MODULE"] == "config.production", name
        assert "--settings" not in str(service.get("command", "")), name
