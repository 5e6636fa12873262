"""Chat reads: a conversation's summary, its messages by cursor, a user's inbox. Always one tenant's."""

from __future__ import annotations

import uuid
from typing import Any

from django.db.models import F

from readmodels.models import ChatConversation, ChatInbox, ChatMessage

MESSAGES_PAGE_DEFAULT = 50
MESSAGES_PAGE_MAX = 200
INBOX_PAGE_MAX = 200


def conversation_summary(*, shard: str, tenant_id: uuid.UUID, conversation_id: str) -> dict[str, Any] | None:
    found = (
        ChatConversation.objects.using(shard)
        .filter(tenant_id=tenant_id, conversation_id=conversation_id)
        .values("conversation_id", "message_count", "member_count", "last_message_at", "last_sender_id", "preview")
        .first()
    )
    return None if found is None else dict(found)


def conversation_messages(
    *, shard: str, tenant_id: uuid.UUID, conversation_id: str, after: int, limit: int
) -> list[dict[str, Any]]:
    """Messages with ``seq`` above ``after``, oldest first. ``seq`` never changes once given, and new
    messages only get higher ones, so paging by it returns every message exactly once."""
    rows = (
        ChatMessage.objects.using(shard)
        .filter(tenant_id=tenant_id, conversation_id=conversation_id, seq__gt=after)
        .order_by("seq")
        .values("seq", "write_id", "sender_id", "body", "sent_at", "position")[:limit]
    )
    return [{"id": str(row["write_id"]), **{k: v for k, v in row.items() if k != "write_id"}} for row in rows]


def user_inbox(*, shard: str, tenant_id: uuid.UUID, user_id: str, limit: int) -> list[dict[str, Any]]:
    """The user's conversations, most recent first, with unread counts and each conversation's summary."""
    inbox: list[dict[str, Any]] = [
        dict(row)
        for row in ChatInbox.objects.using(shard)
        .filter(tenant_id=tenant_id, user_id=user_id)
        .order_by(F("last_message_at").desc(nulls_last=True), "conversation_id")
        .values("conversation_id", "unread_count", "last_read_seq", "last_message_at")[:limit]
    ]
    summaries: dict[str, dict[str, Any]] = {
        s["conversation_id"]: dict(s)
        for s in ChatConversation.objects.using(shard)
        .filter(tenant_id=tenant_id, conversation_id__in=[row["conversation_id"] for row in inbox])
        .values("conversation_id", "message_count", "last_sender_id", "preview")
    }
    for row in inbox:
        summary = summaries.get(row["conversation_id"], {})
        row.update(
            message_count=summary.get("message_count", 0),
            last_sender_id=summary.get("last_sender_id", ""),
            preview=summary.get("preview", ""),
        )
    return inbox


# For the intake of ``POST …/members``: how many members the conversation has besides the ids given
# (the inbox rows are its members). One indexed count, bounded by ``CHAT_MAX_MEMBERS``.
MEMBERS_OTHER_THAN_SQL = """
SELECT count(*) FROM chat_inboxes WHERE tenant_id = %s AND conversation_id = %s AND user_id <> ALL(%s)
"""
