"""Per-tenant rate limits for the API: a token bucket per tenant, kept in this API process's memory.

The limit is per API process (N processes let a tenant through N times the rate); see docs/decisions.md.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.conf import settings
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from api.auth import TenantPrincipal

if TYPE_CHECKING:
    from rest_framework.views import APIView

# Buckets of tenants idle this long are full again anyway: forgetting them keeps memory bounded.
IDLE_BUCKET_SECONDS = 60.0


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class TokenBuckets:
    """Thread-safe token buckets keyed by tenant: ``rate`` tokens a second, at most ``burst`` saved up."""

    def __init__(self) -> None:
        self._buckets: dict[uuid.UUID, _Bucket] = {}
        self._lock = threading.Lock()
        self._last_sweep = time.monotonic()

    def take(self, key: uuid.UUID, *, rate: float, burst: float, now: float | None = None) -> float:
        """Take one token; return 0 when allowed, else the seconds until a token is available."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._sweep(now)
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = _Bucket(tokens=burst, updated=now)
            bucket.tokens = min(burst, bucket.tokens + (now - bucket.updated) * rate)
            bucket.updated = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return 0.0
            return (1.0 - bucket.tokens) / rate

    def _sweep(self, now: float) -> None:
        if now - self._last_sweep < IDLE_BUCKET_SECONDS:
            return
        self._last_sweep = now
        idle = [key for key, bucket in self._buckets.items() if now - bucket.updated > IDLE_BUCKET_SECONDS]
        for key in idle:
            del self._buckets[key]


_buckets = TokenBuckets()


def rate_limit_wait(tenant_id: uuid.UUID) -> float:
    """Take a request's token for ``tenant_id``: 0 when allowed, else the seconds to wait (429)."""
    rate = float(settings.WRITES_RATE_LIMIT_PER_SECOND)
    if rate <= 0:
        return 0.0
    return _buckets.take(tenant_id, rate=rate, burst=max(1.0, float(settings.WRITES_RATE_LIMIT_BURST)))


class TenantRateThrottle(BaseThrottle):
    """``WRITES_RATE_LIMIT_PER_SECOND`` requests a second per tenant (bursts up to ``WRITES_RATE_LIMIT_BURST``).

    A rate of 0 turns the limit off. Runs after authentication, so unknown keys get 401, not 429.
    """

    def __init__(self) -> None:
        self._wait = 0.0

    def allow_request(self, request: Request, view: APIView) -> bool:
        principal = request.user
        if not isinstance(principal, TenantPrincipal):
            return True
        self._wait = rate_limit_wait(principal.context.tenant_id)
        return self._wait == 0.0

    def wait(self) -> float | None:
        return self._wait
