"""Production settings: the base settings, plus refusing to start without the secrets and hosts.

Select with ``DJANGO_SETTINGS_MODULE=config.production``.
"""

from __future__ import annotations

import os

from django.core.exceptions import ImproperlyConfigured

from config.settings import *  # noqa: F403
from config.settings import LOG_LEVEL, env, env_bool, env_int, logging_config


def _required(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        raise ImproperlyConfigured(f"{name} must be set in production.")
    return value


def _secret_key() -> str:
    """SECRET_KEY, or else the contents of the file SECRET_KEY_FILE names (docker-compose keeps one in a
    volume, so the key is the same on every start without being passed to each command)."""
    value = os.environ.get("SECRET_KEY", "").strip()
    path = os.environ.get("SECRET_KEY_FILE", "").strip()
    if not value and path and os.path.exists(path):
        with open(path) as file:
            value = file.read().strip()
    if not value:
        raise ImproperlyConfigured("SECRET_KEY (or a non-empty SECRET_KEY_FILE) must be set in production.")
    return value


if env_bool("DEBUG", False):
    raise ImproperlyConfigured("DEBUG must be off in production.")
DEBUG = False
SECRET_KEY = _secret_key()
ALLOWED_HOSTS = [h.strip() for h in _required("ALLOWED_HOSTS").split(",") if h.strip()]
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", True)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", True)
# Origins (scheme://host[:port]) allowed to POST forms to the admin, e.g. https://admin.example.com.
CSRF_TRUSTED_ORIGINS = [o.strip() for o in env("CSRF_TRUSTED_ORIGINS", "").split(",") if o.strip()]
# TLS by default: Django's answers redirect http to https and carry HSTS. Health and metrics are
# exempt from the redirect (probes and scrapers inside the network speak plain HTTP). A plain-HTTP
# deployment (docker-compose on one host) turns both off.
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31_536_000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
# Behind a TLS-terminating proxy that sets X-Forwarded-Proto (and strips it from clients), trust it;
# never by default: a client could otherwise claim https itself.
if env_bool("TRUST_X_FORWARDED_PROTO", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# Logs are one JSON object per line for the log pipeline, unless LOG_FORMAT says otherwise.
LOGGING = logging_config(os.environ.get("LOG_FORMAT", "json"), LOG_LEVEL)
