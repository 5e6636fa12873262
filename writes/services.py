"""Control-plane services: tenants, their API keys, and the shard map.

API keys are random 256-bit secrets, so a plain SHA-256 is the right hash at rest (a slow KDF protects
guessable passwords, not random keys) and allows an indexed lookup.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

from django.db import IntegrityError, connections, transaction
from django.utils import timezone

from writes.models import ApiKey, ShardMap, Tenant
from writes.routing import TenantContext, default_alias_for, logical_shard_for

KEY_PREFIX = "wk_"


@dataclass(frozen=True, slots=True)
class IssuedKey:
    api_key: ApiKey
    secret: str  # shown once; only its hash is stored


def hash_api_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def shard_for_logical(logical_shard: int) -> str:
    """The physical alias of a logical shard, recording the default placement on first use."""
    entry, _ = ShardMap.objects.get_or_create(
        logical_shard=logical_shard, defaults={"alias": default_alias_for(logical_shard)}
    )
    return entry.alias


@transaction.atomic
def tenant_create(*, name: str) -> Tenant:
    tenant_id = uuid.uuid4()
    tenant = Tenant.objects.create(id=tenant_id, name=name, logical_shard=logical_shard_for(tenant_id))
    shard_for_logical(tenant.logical_shard)
    return tenant


def api_key_issue(*, tenant: Tenant, label: str = "") -> IssuedKey:
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    while True:
        try:
            api_key = ApiKey.objects.create(
                tenant=tenant, label=label, prefix=secret[:10], key_hash=hash_api_key(secret)
            )
            return IssuedKey(api_key=api_key, secret=secret)
        except IntegrityError:  # a 256-bit collision: astronomically unlikely, but never a 500
            secret = KEY_PREFIX + secrets.token_urlsafe(32)


def api_key_revoke(*, api_key: ApiKey) -> None:
    ApiKey.objects.filter(pk=api_key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())


TENANT_FOR_KEY_SQL = f"""
SELECT k.key_hash, t.id, t.logical_shard, m.alias
FROM {ApiKey._meta.db_table} k
JOIN {Tenant._meta.db_table} t ON t.id = k.tenant_id
LEFT JOIN {ShardMap._meta.db_table} m ON m.logical_shard = t.logical_shard
WHERE k.key_hash = %s AND k.revoked_at IS NULL
"""  # noqa: S608 (table names from the models, the key hash bound)


def looks_like_api_key(secret: str) -> bool:
    return secret.startswith(KEY_PREFIX) and len(secret) <= 100


def tenant_from_key_row(row: tuple[Any, ...] | None, digest: str) -> TenantContext | None:
    """The tenant of a ``TENANT_FOR_KEY_SQL`` row (``None``: unknown or revoked key)."""
    if row is None or not hmac.compare_digest(row[0], digest):
        return None
    _, tenant_id, logical_shard, shard = row
    return TenantContext(tenant_id=tenant_id, shard=shard or default_alias_for(logical_shard))


def tenant_for_api_key(secret: str) -> TenantContext | None:
    """The tenant (and its shard) behind a live key, in one query; ``None`` for unknown or revoked keys.

    The API caches the answer per process (``api.keys``); this is the uncached lookup."""
    if not looks_like_api_key(secret):
        return None
    digest = hash_api_key(secret)
    with connections["default"].cursor() as cursor:
        cursor.execute(TENANT_FOR_KEY_SQL, [digest])
        return tenant_from_key_row(cursor.fetchone(), digest)
