"""API keys verified from an in-process cache: no database round trip on the hot path.

Any change to keys, tenants or the shard map notifies ``api_keys_changed`` (database triggers, see
``writes.notifications``); every API process listens and empties its cache, so a revoked key is
refused everywhere within moments. While a process is not listening (start-up, lost connection) it
caches nothing and asks the database every time: a missed notification can never keep a key alive.
"""

from __future__ import annotations

import threading

from writes.routing import TenantContext
from writes.services import hash_api_key, looks_like_api_key, tenant_for_api_key

MAX_ENTRIES = 100_000

_MISSING = object()


class KeyCache:
    """key hash → tenant (or ``None`` for a key that does not work), bounded, cleared on notification."""

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        self._listeners = 0
        self._entries: dict[str, TenantContext | None] = {}
        self._generation = 0
        self._lock = threading.Lock()

    def get(self, digest: str) -> TenantContext | object | None:
        return self._entries.get(digest, _MISSING)

    def generation(self) -> int:
        return self._generation

    def put(self, digest: str, tenant: TenantContext | None, generation: int) -> None:
        """Remember a lookup that started at ``generation``, unless a change was notified since."""
        with self._lock:
            if self._listeners <= 0 or generation != self._generation:
                return
            if len(self._entries) >= self.max_entries:
                self._entries.pop(next(iter(self._entries)))
            self._entries[digest] = tenant

    def clear(self) -> None:
        with self._lock:
            self._generation += 1
            self._entries.clear()

    def set_listening(self, listening: bool) -> None:
        """A listener of this process started (or stopped) receiving ``api_keys_changed``; the cache
        holds entries only while at least one does."""
        with self._lock:
            self._listeners += 1 if listening else -1
            self._generation += 1
            self._entries.clear()


#: The process's cache, shared by the edge (asynchronous lookups) and Django's views (synchronous).
KEYS = KeyCache()


def is_missing(value: object) -> bool:
    return value is _MISSING


def cached_tenant_for_api_key(secret: str) -> TenantContext | None:
    """Synchronous lookup through the cache, for Django's threads."""
    if not looks_like_api_key(secret):
        return None
    digest = hash_api_key(secret)
    found = KEYS.get(digest)
    if not is_missing(found):
        return found  # type: ignore[return-value]
    generation = KEYS.generation()
    tenant = tenant_for_api_key(secret)
    KEYS.put(digest, tenant, generation)
    return tenant
