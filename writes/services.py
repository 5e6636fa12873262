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

from django.db import IntegrityError, transaction
from django.db.models import OuterRef, Subquery
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


def tenant_for_api_key(secret: str) -> TenantContext | None:
    """The tenant (and its shard) behind a live key, in one query; ``None`` for unknown or revoked keys."""
    if not secret.startswith(KEY_PREFIX) or len(secret) > 100:
        return None
    digest = hash_api_key(secret)
    row = (
        ApiKey.objects.filter(key_hash=digest, revoked_at__isnull=True)
        .annotate(
            shard=Subquery(ShardMap.objects.filter(logical_shard=OuterRef("tenant__logical_shard")).values("alias"))
        )
        .values_list("key_hash", "tenant_id", "tenant__logical_shard", "shard")
        .first()
    )
    if row is None or not hmac.compare_digest(row[0], digest):
        return None
    _, tenant_id, logical_shard, shard = row
    return TenantContext(tenant_id=tenant_id, shard=shard or shard_for_logical(logical_shard))
