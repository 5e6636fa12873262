"""Django admin of the read side, one shard at a time and read-only: the read-model tables, each
projection's checkpoint with its lag, and the repair runs."""

from __future__ import annotations

from django.contrib import admin
from django.db import connections

from readmodels.models import (
    ChatConversation,
    ChatInbox,
    ChatMessage,
    EventCountDaily,
    EventCountHourly,
    LedgerBalance,
    ProjectionCheckpoint,
    RepairRun,
)
from readmodels.projector import Freshness, freshness
from writes.admin import ShardFilter, ShardResidentAdmin, TenantFilter


@admin.register(EventCountHourly)
class EventCountHourlyAdmin(ShardResidentAdmin):
    list_display = ["bucket", "name", "count", "tenant_id"]
    list_filter = [ShardFilter, TenantFilter]
    search_fields = ["name"]


@admin.register(EventCountDaily)
class EventCountDailyAdmin(ShardResidentAdmin):
    list_display = ["bucket", "name", "count", "tenant_id"]
    list_filter = [ShardFilter, TenantFilter]
    search_fields = ["name"]


@admin.register(ProjectionCheckpoint)
class ProjectionCheckpointAdmin(ShardResidentAdmin):
    list_display = ["projection", "position", "positions_behind", "lag_seconds", "position_applied_at", "updated_at"]
    list_filter = [ShardFilter]

    def _freshness(self, checkpoint: ProjectionCheckpoint) -> Freshness:
        with connections[checkpoint._state.db or "default"].cursor() as cursor:
            return freshness(cursor, checkpoint.projection)

    @admin.display(description="positions behind")
    def positions_behind(self, checkpoint: ProjectionCheckpoint) -> int:
        return self._freshness(checkpoint).behind

    @admin.display(description="lag (s)")
    def lag_seconds(self, checkpoint: ProjectionCheckpoint) -> float:
        return self._freshness(checkpoint).lag_seconds


@admin.register(RepairRun)
class RepairRunAdmin(ShardResidentAdmin):
    list_display = [
        "started_at", "projection", "outcome", "window_start", "checkpoint",
        "rows_checked", "drift_found", "drift_fixed", "duration_seconds", "message",
    ]  # fmt: skip
    list_filter = [ShardFilter, "outcome"]


class ReadModelAdmin(ShardResidentAdmin):
    list_filter = [ShardFilter, TenantFilter]


@admin.register(ChatConversation)
class ChatConversationAdmin(ReadModelAdmin):
    list_display = [
        "conversation_id",
        "message_count",
        "member_count",
        "last_message_at",
        "last_sender_id",
        "tenant_id",
    ]
    search_fields = ["conversation_id"]


@admin.register(ChatMessage)
class ChatMessageAdmin(ReadModelAdmin):
    list_display = ["conversation_id", "seq", "sender_id", "sent_at", "position", "tenant_id"]
    search_fields = ["conversation_id", "sender_id"]


@admin.register(ChatInbox)
class ChatInboxAdmin(ReadModelAdmin):
    list_display = ["user_id", "conversation_id", "unread_count", "last_read_seq", "last_message_at", "tenant_id"]
    search_fields = ["user_id", "conversation_id"]


@admin.register(LedgerBalance)
class LedgerBalanceAdmin(ReadModelAdmin):
    list_display = ["account_id", "currency", "balance", "transfer_count", "tenant_id"]
    list_filter = [ShardFilter, TenantFilter, "currency"]
    search_fields = ["account_id"]
