"""Production settings: TLS, cookies and origins from the environment, and the image that uses them."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

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
