"""Erasing a tenant's data (GDPR), and the copies a logical-shard move leaves on its old shard.

The log is append-only by trigger; its one exception is a DELETE of the rows of the tenant named by the
transaction-local setting ``writes.erasing_tenant`` (migration ``writes.0007``), set only here. Every
step is idempotent: run again after a crash, an erasure finishes the job (and erasing an id again
finds nothing and still succeeds).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

from django.apps import apps
from django.conf import settings
from django.db import connections, transaction
from django.utils import timezone

from readmodels.projections import PROJECTIONS
from readmodels.projector import lock_checkpoint
from readmodels.repair import maintenance_lock
from writes.apply import APPEND_LOCK_KEY
from writes.dead_letters import dead_letters_remove_groups
from writes.errors import WritesError
from writes.models import ApiKey, ErasedTenant, MovedLogicalShard, ShardMap, Tenant, TenantErasure
from writes.moves import MoveError, move_lock
from writes.routing import is_shard_resident, logical_shard_for

#: One erasure step of another module, called with the tenant id (text) after the shards and dead letters
#: and before the tenant row goes; it returns what it deleted per store (merged into the record's counts).
ErasureStep = Callable[[str], dict[str, int]]

#: Extra erasure steps: a module that keeps tenant data elsewhere (archives of the log, …) appends its
#: step here when its app is ready. Each must be idempotent, as the steps here are.
EXTRA_STEPS: list[ErasureStep] = []

# How long an erasure waits for a running repair or rebuild of a read model on a shard.
MAINTENANCE_WAIT_SECONDS = 60.0

# Per store: a table name → rows, or a number (API keys, dead-lettered writes, …).
Counts = dict[str, Any]

_ERASING = "SELECT set_config('writes.erasing_tenant', %s, true)"
_TOMBSTONE = "INSERT INTO erased_tenants (tenant_id) VALUES (%s) ON CONFLICT (tenant_id) DO NOTHING"


class ErasureError(WritesError):
    """The erasure cannot run now; the message says why. Nothing is half-done that a re-run does not finish."""


# Shard tables with a ``tenant_id`` that no model describes: the ids of ``writes.partitions`` without a
# day of their own.
UNMODELLED_TENANT_TABLES = ("write_id_days",)


def tenant_tables() -> list[str]:
    """Every shard table holding tenant rows: the shard-resident models with a ``tenant_id`` column, so a
    new read model is erased without a change here. The tombstones are not tenant data."""
    modelled = {
        model._meta.db_table
        for model in apps.get_models()
        if is_shard_resident(model)
        and model is not ErasedTenant
        and any(column.name == "tenant_id" for column in model._meta.concrete_fields)
    }
    return sorted(modelled | set(UNMODELLED_TENANT_TABLES))


# --- Erasing one tenant ------------------------------------------------------------------------


def tenant_erasure_preview(*, tenant_id: str) -> Counts:
    """What ``tenant_erase`` would delete, per store; changes nothing. Extra steps are not asked."""
    tenant = _tenant_uuid(tenant_id)
    counts: Counts = {"api_keys": ApiKey.objects.filter(tenant_id=tenant).count()}
    for alias in settings.SHARD_ALIASES:
        counts[alias] = _count_on_shard(alias, tenant)
    counts["dead_letters"] = dead_letters_remove_groups(_groups_of(tenant), dry_run=True).writes
    counts["tenant"] = Tenant.objects.filter(id=tenant).count()
    return counts


def tenant_erase(*, tenant_id: str, report: Callable[[str], None] = lambda line: None) -> TenantErasure:
    """Erase everything of one tenant: its API keys, its rows on every shard, its dead-lettered writes,
    what ``EXTRA_STEPS`` keep, and the tenant itself. Returns the completed ``TenantErasure``.

    Order matters: the keys go first, so nothing new is accepted and nothing is readable through the API
    (deleting them notifies every API process, whose key cache drops them); then each shard gets its
    tombstone, so the applier drops writes of the tenant still on their way, and loses the rows.
    """
    tenant = _tenant_uuid(tenant_id)
    try:
        with move_lock(logical_shard_for(tenant)):  # no move copies the tenant's rows meanwhile
            return _tenant_erase(tenant, report)
    except MoveError as exc:
        raise ErasureError(
            f"Logical shard {logical_shard_for(tenant)} is being moved or cleaned by another process; "
            "run the erasure again when it has finished."
        ) from exc


def _tenant_erase(tenant: uuid.UUID, report: Callable[[str], None]) -> TenantErasure:
    # (a) The record first; a re-run after a crash continues the unfinished one.
    record = TenantErasure.objects.filter(
        tenant_id=tenant, scope=TenantErasure.SCOPE_TENANT, completed_at__isnull=True
    ).first() or TenantErasure.objects.create(tenant_id=tenant, requested_at=timezone.now())
    report(f"erasing tenant {tenant} (erasure #{record.pk})")

    # (b) API keys: nothing new is accepted and nothing can be read from now on.
    deleted, _ = ApiKey.objects.filter(tenant_id=tenant).delete()
    _progress(record, {"api_keys": deleted}, report)

    # (c) Every shard, also those it never lived on: forwarded or moved writes may reach any of them.
    for alias in settings.SHARD_ALIASES:
        _tombstone(alias, tenant)
        _progress(record, {alias: _erase_on_shard(alias, tenant)}, report)

    # (d) Dead letters: the tenant's groups out of every message; other tenants' groups stay.
    removed = dead_letters_remove_groups(_groups_of(tenant))
    _progress(record, {"dead_letters": removed.writes}, report)

    # Stores kept by other modules (archives, …).
    for step in EXTRA_STEPS:
        _progress(record, step(str(tenant)), report)

    # (e) The tenant itself; its shard map entry belongs to the logical shard and stays.
    deleted, _ = Tenant.objects.filter(id=tenant).delete()
    _progress(record, {"tenant": deleted}, report)

    # (f) Done.
    record.completed_at = timezone.now()
    record.save(update_fields=["completed_at"])
    return record


def _tenant_uuid(tenant_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(str(tenant_id))
    except ValueError as exc:
        raise ErasureError(f"{tenant_id!r} is not a tenant id (a UUID, as the admin shows it).") from exc


def _groups_of(tenant: uuid.UUID) -> Callable[[Any], bool]:
    """A predicate on message groups ``[tenant_id, kind, received_at, items]``: is it this tenant's?"""
    spelled = str(tenant)

    def is_tenants(group: Any) -> bool:
        return str(group[0]).lower() == spelled

    return is_tenants


def _tombstone(alias: str, tenant: uuid.UUID) -> None:
    """Record the tenant as erased on ``alias``, under the append lock, in a transaction of its own.

    The lock waits for the appends in flight to commit (the deletion that follows then sees their rows);
    every later append sees the tombstone. It is held only for the insert: holding it for the deletion
    too would stop every tenant's writes on the shard for as long as a large tenant takes to delete.
    """
    with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [APPEND_LOCK_KEY])
        cursor.execute(_TOMBSTONE, [tenant])


def _erase_on_shard(alias: str, tenant: uuid.UUID) -> dict[str, int]:
    """Delete the tenant's rows from every tenant table of one shard, in one transaction; rows per table.

    Repairs and rebuilds of the read models are kept out for the time (they could write back rows they
    computed before), and the projector is paused (its checkpoints held), so no slice it read before
    the deletion writes the tenant's read-model rows again after it.
    """
    with _read_models_held(alias), transaction.atomic(using=alias), connections[alias].cursor() as cursor:
        for projection in PROJECTIONS:
            lock_checkpoint(cursor, projection.name)
        cursor.execute(_ERASING, [str(tenant)])
        counts: dict[str, int] = {}
        for table in tenant_tables():
            cursor.execute(f"DELETE FROM {table} WHERE tenant_id = %s", [tenant])  # noqa: S608 (table from models)
            counts[table] = int(cursor.rowcount)
        return counts


def _count_on_shard(alias: str, tenant: uuid.UUID) -> dict[str, int]:
    counts: dict[str, int] = {}
    with connections[alias].cursor() as cursor:
        for table in tenant_tables():
            cursor.execute(f"SELECT count(*) FROM {table} WHERE tenant_id = %s", [tenant])  # noqa: S608
            counts[table] = int(cursor.fetchone()[0])
    return counts


@contextmanager
def _read_models_held(alias: str) -> Iterator[None]:
    """Hold every projection's maintenance lock on ``alias`` (waiting a while for a running repair or
    rebuild to finish)."""
    deadline = time.monotonic() + MAINTENANCE_WAIT_SECONDS
    while True:
        with ExitStack() as held:
            busy = [p.name for p in PROJECTIONS if not held.enter_context(maintenance_lock(alias, p.name))]
            if not busy:
                yield
                return
        if time.monotonic() > deadline:
            raise ErasureError(
                f"A repair or rebuild of {', '.join(busy)} on {alias} has run for over "
                f"{MAINTENANCE_WAIT_SECONDS:.0f} s; run the erasure again when it has finished."
            )
        time.sleep(0.5)


def _progress(record: TenantErasure, counts: Counts, report: Callable[[str], None]) -> None:
    """Add ``counts`` to the record's and save it: a re-run after a crash adds what it finds then."""
    _merge(record.counts, counts)
    record.save(update_fields=["counts"])
    for store, found in counts.items():
        report(f"  {store}: {_describe(found)}")


def _merge(into: Counts, counts: Counts) -> None:
    for store, found in counts.items():
        if isinstance(found, dict):
            _merge(into.setdefault(store, {}), found)
        else:
            into[store] = int(into.get(store, 0)) + int(found)


def _describe(found: Any) -> str:
    if isinstance(found, dict):
        return ", ".join(f"{table} {rows}" for table, rows in found.items() if rows) or "nothing"
    return str(found)


def describe_counts(counts: Counts) -> list[str]:
    """One line per store, for the commands."""
    return [f"{store}: {_describe(found)}" for store, found in counts.items()]


# --- The old copies of moved logical shards ----------------------------------------------------


@dataclass
class MovedCopy:
    """A logical shard that left ``old_shard`` for ``new_shard``: the old shard still holds its rows."""

    logical_shard: int
    old_shard: str
    new_shard: str
    #: tenant id → rows on the old shard per table (what was, or in a dry run would be, erased).
    tenants: dict[str, dict[str, int]] = field(default_factory=dict)
    skipped: str = ""  # why this copy was left alone, if it was

    @property
    def scope(self) -> str:
        return moved_scope(self.logical_shard, self.old_shard)


def moved_scope(logical_shard: int, old_shard: str) -> str:
    return f"moved logical shard {logical_shard} from {old_shard}"


def moved_copies_erase(*, dry_run: bool = False, report: Callable[[str], None] = lambda line: None) -> list[MovedCopy]:
    """On every shard, erase the rows of the logical shards it has moved away (fence ``moved``): the rows of
    every tenant of such a logical shard, by the same gated delete, each recorded as a ``TenantErasure``.

    The new shard is not touched and no tombstone is written (the tenants live on there). A logical shard
    whose move is under way, or that the shard map does not place where its fence says, is skipped.
    """
    copies: list[MovedCopy] = []
    for alias in settings.SHARD_ALIASES:
        for fence in MovedLogicalShard.objects.using(alias).filter(state=MovedLogicalShard.MOVED):
            copy = MovedCopy(logical_shard=fence.logical_shard, old_shard=alias, new_shard=fence.moved_to)
            copies.append(copy)
            try:
                with move_lock(copy.logical_shard):
                    _erase_moved_copy(copy, dry_run=dry_run, report=report)
            except MoveError:
                copy.skipped = "a move of it is under way; run this again when it has finished"
            if copy.skipped:
                report(f"{copy.scope}: skipped, {copy.skipped}")
    return copies


def _erase_moved_copy(copy: MovedCopy, *, dry_run: bool, report: Callable[[str], None]) -> None:
    # Read again under the move lock: a move back may have changed both since the listing.
    fence = MovedLogicalShard.objects.using(copy.old_shard).filter(logical_shard=copy.logical_shard).first()
    placed = ShardMap.objects.filter(logical_shard=copy.logical_shard).values_list("alias", flat=True).first()
    if fence is None or fence.state != MovedLogicalShard.MOVED or fence.moved_to != copy.new_shard:
        copy.skipped = "its fence changed meanwhile"
        return
    if placed != copy.new_shard:
        copy.skipped = f"the shard map places it on {placed or 'no shard'}, not on {copy.new_shard}"
        return
    for tenant in Tenant.objects.filter(logical_shard=copy.logical_shard).values_list("id", flat=True):
        unfinished = TenantErasure.objects.filter(tenant_id=tenant, scope=copy.scope, completed_at__isnull=True).first()
        found = _count_on_shard(copy.old_shard, tenant)
        if not any(found.values()) and unfinished is None:
            continue  # nothing there (cleaned before): no record
        if dry_run:
            copy.tenants[str(tenant)] = found
            report(f"{copy.scope}: tenant {tenant}: {_describe(found)}")
            continue
        record = unfinished or TenantErasure.objects.create(
            tenant_id=tenant, scope=copy.scope, requested_at=timezone.now()
        )
        report(f"{copy.scope}: tenant {tenant} (erasure #{record.pk})")
        erased = _erase_on_shard(copy.old_shard, tenant)
        copy.tenants[str(tenant)] = erased
        _progress(record, {copy.old_shard: erased}, report)
        record.completed_at = timezone.now()
        record.save(update_fields=["completed_at"])
