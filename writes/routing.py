"""Tenant → logical shard → physical shard, and the database router that follows it.

The current tenant lives in a context variable, set by API authentication and by each task from its
arguments. A shard-resident query with neither a tenant nor an explicit ``using()`` raises.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from django.apps import apps
from django.conf import settings
from django.db import models

from writes.errors import NoShardSelected
from writes.models import LOGICAL_SHARDS


@dataclass(frozen=True, slots=True)
class TenantContext:
    tenant_id: uuid.UUID
    shard: str


current_tenant: ContextVar[TenantContext | None] = ContextVar("current_tenant", default=None)


@contextmanager
def tenant_context(context: TenantContext | None) -> Iterator[TenantContext | None]:
    token = current_tenant.set(context)
    try:
        yield context
    finally:
        current_tenant.reset(token)


def logical_shard_for(tenant_id: uuid.UUID) -> int:
    """A stable hash of the tenant id, so every process and every language agrees on it."""
    digest = hashlib.sha256(tenant_id.bytes).digest()
    return int.from_bytes(digest[:8], "big") % LOGICAL_SHARDS


def default_alias_for(logical_shard: int) -> str:
    """Where a logical shard lives when the shard map has no entry yet: spread evenly."""
    aliases = settings.SHARD_ALIASES
    return aliases[logical_shard % len(aliases)]


def is_shard_resident(model: type[models.Model]) -> bool:
    return bool(getattr(model, "SHARD_RESIDENT", False))


def _is_shard_resident_by_name(app_label: str, model_name: str | None, hints: dict[str, Any]) -> bool:
    if "shard_resident" in hints:
        return bool(hints["shard_resident"])
    if model_name is None:
        return app_label == "readmodels"
    try:
        return is_shard_resident(apps.get_model(app_label, model_name))
    except LookupError:
        return app_label == "readmodels"


class ShardRouter:
    """Shard-resident models go to the current tenant's shard; everything else to ``default``."""

    def _db_for(self, model: type[models.Model], **hints: Any) -> str:
        if not is_shard_resident(model):
            return "default"
        instance = hints.get("instance")
        if instance is not None and instance._state.db:
            return str(instance._state.db)
        context = current_tenant.get()
        if context is None:
            raise NoShardSelected(
                f"{model.__name__} lives on a shard: set a tenant (tenant_context) or choose one with using()."
            )
        return context.shard

    def db_for_read(self, model: type[models.Model], **hints: Any) -> str:
        return self._db_for(model, **hints)

    def db_for_write(self, model: type[models.Model], **hints: Any) -> str:
        return self._db_for(model, **hints)

    def allow_relation(self, obj1: models.Model, obj2: models.Model, **hints: Any) -> bool:
        return bool(obj1._state.db == obj2._state.db)

    def allow_migrate(self, db: str, app_label: str, model_name: str | None = None, **hints: Any) -> bool:
        on_shard = db in settings.SHARD_ALIASES
        if app_label in {"writes", "readmodels"}:
            return _is_shard_resident_by_name(app_label, model_name, hints) == on_shard
        # Django's own apps (auth, admin, sessions, contenttypes) live in the control database only.
        return not on_shard
