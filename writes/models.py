"""Tables of the write path.

Control database: ``Tenant``, ``ApiKey``, ``ShardMap``, ``TenantErasure``. Every shard database:
``WriteLog`` (append-only, enforced by a trigger; an erasure may delete one tenant's rows), ``RejectedWrite``,
``MovedLogicalShard`` (logical shards that left it) and ``ErasedTenant``. ``SHARD_RESIDENT = True`` tells
the router where a model lives.
"""

from __future__ import annotations

from typing import ClassVar

from django.db import models
from django.db.models.functions import Now

LOGICAL_SHARDS = 256


class Tenant(models.Model):
    id = models.UUIDField(primary_key=True)
    name = models.CharField(max_length=200, unique=True)
    # hash(id) mod LOGICAL_SHARDS, fixed at creation; the shard map says where it lives physically.
    logical_shard = models.PositiveSmallIntegerField(editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class ApiKey(models.Model):
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="api_keys")
    label = models.CharField(max_length=200, blank=True)
    # The first characters of the key, to tell keys apart; the key itself is never stored.
    prefix = models.CharField(max_length=16, editable=False)
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "API key"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.label or 'unlabelled'})"


class ShardMap(models.Model):
    logical_shard = models.PositiveSmallIntegerField(primary_key=True)
    alias = models.CharField(max_length=64)

    class Meta:
        ordering = ["logical_shard"]
        verbose_name = "shard map entry"
        verbose_name_plural = "shard map"

    def __str__(self) -> str:
        return f"{self.logical_shard} → {self.alias}"


class WriteLog(models.Model):
    """One applied write. Insert-only: the database rejects UPDATE and DELETE.

    Partitioned by ``id_day`` (``writes.partitions``): the primary key in the database is
    ``(position, id_day)``, positions are unique by their sequence, and ``(tenant_id, write_id)`` is
    unique because ``id_day`` is a function of it.
    """

    SHARD_RESIDENT: ClassVar[bool] = True

    position = models.BigAutoField(primary_key=True)
    tenant_id = models.UUIDField()
    write_id = models.UUIDField()
    kind = models.CharField(max_length=32)
    key = models.CharField(max_length=200)
    payload = models.JSONField()
    occurred_at = models.DateTimeField()
    received_at = models.DateTimeField()
    applied_at = models.DateTimeField(db_default=Now())
    #: The partition: the UTC day of a UUIDv7 id, or the day any other id was first applied.
    id_day = models.DateField()

    class Meta:
        db_table = "write_log"
        ordering = ["position"]
        constraints = [
            models.UniqueConstraint(fields=["tenant_id", "write_id", "id_day"], name="write_log_tenant_id_day_uniq")
        ]

    def __str__(self) -> str:
        return f"#{self.position} {self.kind} {self.write_id}"


class RejectedWrite(models.Model):
    """A write that passed intake validation but could not be applied, with the reason."""

    SHARD_RESIDENT: ClassVar[bool] = True

    tenant_id = models.UUIDField()
    write_id = models.UUIDField()
    kind = models.CharField(max_length=32)
    key = models.CharField(max_length=200)
    payload = models.TextField()
    code = models.CharField(max_length=64)
    reason = models.TextField()
    rejected_at = models.DateTimeField(db_default=Now())

    class Meta:
        db_table = "rejected_writes"
        ordering = ["-rejected_at"]
        constraints = [models.UniqueConstraint(fields=["tenant_id", "write_id"], name="rejected_writes_tenant_id_uniq")]

    def __str__(self) -> str:
        return f"{self.kind} {self.write_id}: {self.code}"


class LedgerAccount(models.Model):
    """A ledger account, created synchronously by the API on the tenant's shard.

    It lives on the shard so that the applier can lock it in the same transaction as the transfers that
    move it. ``balance`` is the strongly consistent balance, kept by the applier for ``no_overdraft``
    accounts only (``NULL`` for the others, whose balance is the ``ledger_balances`` projection).
    """

    SHARD_RESIDENT: ClassVar[bool] = True

    tenant_id = models.UUIDField()
    account_id = models.CharField(max_length=200)
    currency = models.CharField(max_length=3)
    no_overdraft = models.BooleanField(default=False)
    balance = models.DecimalField(max_digits=40, decimal_places=0, null=True, blank=True)
    created_at = models.DateTimeField(db_default=Now())

    class Meta:
        db_table = "ledger_accounts"
        ordering = ["tenant_id", "account_id"]
        constraints = [
            models.UniqueConstraint(fields=["tenant_id", "account_id"], name="ledger_accounts_tenant_account_uniq"),
            models.CheckConstraint(
                condition=models.Q(no_overdraft=False) | models.Q(balance__gte=0), name="ledger_accounts_no_overdraft"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.account_id} ({self.currency})"


class MovedLogicalShard(models.Model):
    """On a shard: a logical shard that is leaving ("holding") or has left ("moved") this shard.

    Appenders read this table under the shard's append lock and forward such writes instead of applying
    them here; ``move_logical_shard`` changes it under the same lock, so no append can slip past it.
    """

    SHARD_RESIDENT: ClassVar[bool] = True
    HOLDING = "holding"
    MOVED = "moved"

    logical_shard = models.PositiveSmallIntegerField(primary_key=True)
    moved_to = models.CharField(max_length=64)
    state = models.CharField(max_length=16, choices=[(HOLDING, "holding"), (MOVED, "moved")])
    fenced_at = models.DateTimeField(db_default=Now())

    class Meta:
        db_table = "moved_logical_shards"
        ordering = ["logical_shard"]

    def __str__(self) -> str:
        return f"{self.logical_shard} → {self.moved_to} ({self.state})"


class TenantErasure(models.Model):
    """One erasure of a tenant's data (``writes.erasure``): what was erased, where, and when it finished.

    ``tenant_id`` is no foreign key: the tenant row is the last thing an erasure deletes, and this record
    stays. ``counts`` holds the rows (or writes) deleted per store, e.g. ``{"shard_0": {"write_log": 12},
    "dead_letters": 3, "api_keys": 1}``.
    """

    SCOPE_TENANT = "tenant"

    tenant_id = models.UUIDField(db_index=True)
    # "tenant" (everything of it, everywhere) or "moved logical shard N from shard_X" (an old copy).
    scope = models.CharField(max_length=200, default=SCOPE_TENANT)
    requested_at = models.DateTimeField()
    completed_at = models.DateTimeField(null=True, blank=True)
    counts = models.JSONField(default=dict)

    class Meta:
        ordering = ["-requested_at"]
        verbose_name = "tenant erasure"

    def __str__(self) -> str:
        state = "done" if self.completed_at else "in progress"
        return f"{self.tenant_id} ({self.scope}, {state})"


class ErasedTenant(models.Model):
    """On every shard: a tenant whose data was erased. Writes of it that arrive later (still queued,
    dead-lettered, forwarded) are dropped by the applier instead of applied."""

    SHARD_RESIDENT: ClassVar[bool] = True

    tenant_id = models.UUIDField(primary_key=True)
    erased_at = models.DateTimeField(db_default=Now())

    class Meta:
        db_table = "erased_tenants"
        ordering = ["-erased_at"]

    def __str__(self) -> str:
        return f"{self.tenant_id} (erased {self.erased_at:%Y-%m-%d %H:%M})"
