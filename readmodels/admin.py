"""Django admin for the read models: read-only (they are derived from the log), one shard at a time."""

from __future__ import annotations

from django.contrib import admin

from readmodels.models import ChatConversation, ChatInbox, ChatMessage, LedgerBalance
from writes.admin import ShardFilter, ShardResidentAdmin, TenantFilter


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
