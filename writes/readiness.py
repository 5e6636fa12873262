"""Whether the broker answers, for /readyz and the start-up checks."""

from __future__ import annotations

from django.conf import settings
from kombu import Connection


def broker_reachable(timeout: float = 2.0) -> bool:
    try:
        with Connection(settings.CELERY_BROKER_URL, connect_timeout=timeout) as connection:
            connection.connect()
        return True
    except Exception:
        return False
