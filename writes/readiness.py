"""Whether the broker answers, for /readyz and the start-up checks."""

from __future__ import annotations

from writes.broker import broker_connection


def broker_reachable(timeout: float = 2.0) -> bool:
    try:
        with broker_connection(connect_timeout=timeout):
            return True
    except Exception:
        return False
