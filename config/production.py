"""Production settings: the base settings, plus refusing to start without the secrets and hosts.

Select with ``DJANGO_SETTINGS_MODULE=config.production``.
"""

from __future__ import annotations

import os

from django.core.exceptions import ImproperlyConfigured

from config.settings import *  # noqa: F403
from config.settings import LOG_LEVEL, env_bool, logging_config


def _required(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        raise ImproperlyConfigured(f"{name} must be set in production.")
    return value


if env_bool("DEBUG", False):
    raise ImproperlyConfigured("DEBUG must be off in production.")
DEBUG = False
SECRET_KEY = _required("SECRET_KEY")
ALLOWED_HOSTS = [h.strip() for h in _required("ALLOWED_HOSTS").split(",") if h.strip()]
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", True)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", True)
# Logs are one JSON object per line for the log pipeline, unless LOG_FORMAT says otherwise.
LOGGING = logging_config(os.environ.get("LOG_FORMAT", "json"), LOG_LEVEL)
