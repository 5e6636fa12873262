"""Read-model tables. Every model here lives on the shards (the router sends the whole app there)."""

from __future__ import annotations

from typing import ClassVar

from django.db import models
from django.db.models.functions import Now


class ProjectionCheckpoint(models.Model):
    """How far one projection has read its shard's write log. Updated in the same transaction as the
    read-model rows it covers, so a projection's effect is exactly once."""

    SHARD_RESIDENT: ClassVar[bool] = True

    projection = models.CharField(max_length=64, primary_key=True)
    position = models.BigIntegerField(default=0)
    # applied_at of the log row at ``position``: how fresh the projection is, in log time.
    position_applied_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(db_default=Now())

    class Meta:
        db_table = "projection_checkpoints"
        ordering = ["projection"]

    def __str__(self) -> str:
        return f"{self.projection} @ {self.position}"


class EventCount(models.Model):
    """How many events of one name a tenant recorded in one time bucket (by ``occurred_at``)."""

    SHARD_RESIDENT: ClassVar[bool] = True

    id = models.BigAutoField(primary_key=True)
    tenant_id = models.UUIDField()
    name = models.CharField(max_length=200)
    count = models.BigIntegerField()

    class Meta:
        abstract = True


class EventCountHourly(EventCount):
    bucket = models.DateTimeField(help_text="Start of the UTC hour.")

    class Meta:
        db_table = "event_counts_hourly"
        ordering = ["-bucket", "name"]
        verbose_name = "event count (hourly)"
        verbose_name_plural = "event counts (hourly)"
        constraints = [
            models.UniqueConstraint(fields=["tenant_id", "name", "bucket"], name="event_counts_hourly_key"),
        ]
        indexes = [models.Index(fields=["tenant_id", "bucket"], name="event_counts_hourly_time")]

    def __str__(self) -> str:
        return f"{self.name} @ {self.bucket:%Y-%m-%d %H}:00 = {self.count}"


class EventCountDaily(EventCount):
    bucket = models.DateTimeField(help_text="Start of the UTC day.")

    class Meta:
        db_table = "event_counts_daily"
        ordering = ["-bucket", "name"]
        verbose_name = "event count (daily)"
        verbose_name_plural = "event counts (daily)"
        constraints = [
            models.UniqueConstraint(fields=["tenant_id", "name", "bucket"], name="event_counts_daily_key"),
        ]
        indexes = [models.Index(fields=["tenant_id", "bucket"], name="event_counts_daily_time")]

    def __str__(self) -> str:
        return f"{self.name} @ {self.bucket:%Y-%m-%d} = {self.count}"


class RepairRun(models.Model):
    """One repair of one projection on one shard: what it compared, what it found and fixed."""

    SHARD_RESIDENT: ClassVar[bool] = True

    class Outcome(models.TextChoices):
        OK = "ok", "ok"
        SKIPPED = "skipped", "skipped"
        FAILED = "failed", "failed"

    id = models.BigAutoField(primary_key=True)
    projection = models.CharField(max_length=64)
    shard = models.CharField(max_length=64)
    window_start = models.DateTimeField(null=True, blank=True)
    # The log position the recomputation read up to: the projection's checkpoint in the same snapshot.
    checkpoint = models.BigIntegerField(null=True, blank=True)
    rows_checked = models.BigIntegerField(default=0)
    drift_found = models.BigIntegerField(default=0)
    drift_fixed = models.BigIntegerField(default=0)
    duration_seconds = models.FloatField(default=0.0)
    outcome = models.CharField(max_length=16, choices=Outcome.choices, default=Outcome.OK)
    message = models.TextField(blank=True)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(db_default=Now())

    class Meta:
        db_table = "repair_runs"
        ordering = ["-started_at"]

    def __str__(self) -> str:
        return f"{self.projection} on {self.shard} at {self.started_at:%Y-%m-%d %H:%M:%S}: {self.outcome}"


class ChatMessage(models.Model):
    """A conversation's messages in order: ``seq`` numbers them 1, 2, … per conversation, and the
    unique index on (tenant, conversation, seq) serves cursor pagination."""

    SHARD_RESIDENT: ClassVar[bool] = True

    position = models.BigIntegerField(primary_key=True)  # the message's write_log position
    tenant_id = models.UUIDField()
    conversation_id = models.CharField(max_length=200)
    seq = models.BigIntegerField()
    write_id = models.UUIDField()
    sender_id = models.CharField(max_length=200)
    body = models.TextField()
    sent_at = models.DateTimeField()

    class Meta:
        db_table = "chat_messages"
        ordering = ["tenant_id", "conversation_id", "seq"]
        constraints = [
            models.UniqueConstraint(fields=["tenant_id", "conversation_id", "seq"], name="chat_messages_seq_uniq")
        ]

    def __str__(self) -> str:
        return f"{self.conversation_id}#{self.seq}"


class ChatConversation(models.Model):
    """A conversation's summary: message count (= last ``seq``), last message, a preview."""

    SHARD_RESIDENT: ClassVar[bool] = True

    tenant_id = models.UUIDField()
    conversation_id = models.CharField(max_length=200)
    message_count = models.BigIntegerField(default=0)
    member_count = models.IntegerField(default=0)
    last_message_at = models.DateTimeField(null=True, blank=True)
    last_sender_id = models.CharField(max_length=200, blank=True)
    preview = models.CharField(max_length=200, blank=True)

    class Meta:
        db_table = "chat_conversations"
        ordering = ["tenant_id", "conversation_id"]
        constraints = [models.UniqueConstraint(fields=["tenant_id", "conversation_id"], name="chat_conversations_uniq")]

    def __str__(self) -> str:
        return self.conversation_id


class ChatInbox(models.Model):
    """One member's view of one conversation: how far they have read and how many messages from others
    they have not read yet. The index on (tenant, user, last_message_at) serves the inbox."""

    SHARD_RESIDENT: ClassVar[bool] = True

    tenant_id = models.UUIDField()
    user_id = models.CharField(max_length=200)
    conversation_id = models.CharField(max_length=200)
    last_read_seq = models.BigIntegerField(default=0)
    unread_count = models.BigIntegerField(default=0)
    last_message_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "chat_inboxes"
        ordering = ["tenant_id", "user_id", "-last_message_at"]
        constraints = [
            models.UniqueConstraint(fields=["tenant_id", "conversation_id", "user_id"], name="chat_inboxes_uniq")
        ]
        # Most recent first, conversations without messages last: the inbox query's order exactly.
        indexes = [
            models.Index(
                models.F("tenant_id"),
                models.F("user_id"),
                models.F("last_message_at").desc(nulls_last=True),
                name="chat_inboxes_user_idx",
            )
        ]

    def __str__(self) -> str:
        return f"{self.user_id} in {self.conversation_id}: {self.unread_count} unread"


class LedgerBalance(models.Model):
    """The projected balance of a ledger account: the sum of its applied transfers (credits minus
    debits), in minor units."""

    SHARD_RESIDENT: ClassVar[bool] = True

    tenant_id = models.UUIDField()
    account_id = models.CharField(max_length=200)
    currency = models.CharField(max_length=3)
    balance = models.DecimalField(max_digits=40, decimal_places=0, default=0)
    transfer_count = models.BigIntegerField(default=0)

    class Meta:
        db_table = "ledger_balances"
        ordering = ["tenant_id", "account_id"]
        constraints = [
            models.UniqueConstraint(fields=["tenant_id", "account_id", "currency"], name="ledger_balances_uniq")
        ]

    def __str__(self) -> str:
        return f"{self.account_id}: {self.balance} {self.currency}"
