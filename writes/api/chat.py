"""HTTP surface of chat: messages, members and read marks are writes (202); conversations, their
messages and inboxes are read from the read models, with ``as_of`` and ``lag_seconds``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import msgspec
from django.conf import settings
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from readmodels.projections.chat import ChatProjection
from readmodels.selectors.chat import (
    INBOX_PAGE_MAX,
    MESSAGES_PAGE_DEFAULT,
    MESSAGES_PAGE_MAX,
    conversation_messages,
    conversation_summary,
    user_inbox,
)
from readmodels.selectors.freshness import projection_freshness, wait_for_position
from writes.api import openapi
from writes.api.views import accept_request, tenant_of
from writes.intake import RowBuilder, members_rows_for, message_rows_for, read_rows_for
from writes.schemas import MembersIn, MessageIn, ReadIn, ValidationFailed, check_id_text

T = TypeVar("T", bound=msgspec.Struct)

PROJECTION = ChatProjection.name

MIN_POSITION = OpenApiParameter(
    "min_position", int, description="Wait (up to 30 s) until the read model has passed this log position."
)


def checked_path_id(value: str, field_name: str) -> str:
    problem = check_id_text(value, field_name)
    if problem is not None:
        raise ValidationFailed(f"Invalid {field_name}.", [problem])
    return value


def _int_param(request: Request, name: str, default: int, *, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ValidationError({name: f"An integer from {low} to {high}."}) from exc
    if not low <= value <= high:
        raise ValidationError({name: f"An integer from {low} to {high}."})
    return value


def _fresh(request: Request, shard: str) -> dict[str, Any]:
    min_position = _int_param(request, "min_position", 0, low=0, high=2**63 - 1)
    reached = not min_position or wait_for_position(
        shard=shard, projection=PROJECTION, position=min_position, timeout=settings.READMODELS_MAX_WAIT_SECONDS
    )
    return {**projection_freshness(shard, PROJECTION), "timed_out": not reached}


class ConversationView(APIView):
    @extend_schema(
        operation_id="conversation_summary",
        summary="A conversation's summary",
        parameters=[MIN_POSITION],
        responses={200: openapi.response_of("ConversationOut"), **openapi.ERROR_RESPONSES},
    )
    def get(self, request: Request, conversation_id: str) -> Response:
        tenant = tenant_of(request)
        freshness = _fresh(request, tenant.shard)
        summary = conversation_summary(
            shard=tenant.shard,
            tenant_id=tenant.tenant_id,
            conversation_id=checked_path_id(conversation_id, "conversation_id"),
        )
        if summary is None:
            raise NotFound("No conversation with this id (or none of its writes is applied yet).")
        return Response({**summary, **freshness})


def _accept(
    request: Request,
    conversation_id: str,
    *,
    kind: str,
    item_type: type[T],
    rows_for: Callable[[str], RowBuilder[T]],
) -> Response:
    """One conversation write endpoint: the conversation id from the path is every row's key."""
    conversation_id = checked_path_id(conversation_id, "conversation_id")
    return accept_request(request, kind=kind, item_type=item_type, build_rows=rows_for(conversation_id))


class ConversationMessagesView(APIView):
    @extend_schema(
        operation_id="conversation_messages_create",
        summary="Send messages to a conversation",
        description='One message, or `{"batch": [...]}`. Body ≤ 16 KiB of UTF-8 per message. The sender '
        "becomes a member. Answered once RabbitMQ confirmed.",
        request=openapi.request_of("MessageIn"),
        responses=openapi.WRITE_RESPONSES,
    )
    def post(self, request: Request, conversation_id: str) -> Response:
        return _accept(request, conversation_id, kind="message", item_type=MessageIn, rows_for=message_rows_for)

    @extend_schema(
        operation_id="conversation_messages_list",
        summary="A conversation's messages, oldest first",
        description="Cursor pagination by `seq`: pass the `next_after` of a page as `after` to get the next. "
        "Messages never move, so every message is returned exactly once, also while new ones arrive.",
        parameters=[
            OpenApiParameter("after", int, description="Return messages with a `seq` above this (default 0)."),
            OpenApiParameter("limit", int, description=f"1 to {MESSAGES_PAGE_MAX} (default {MESSAGES_PAGE_DEFAULT})."),
            MIN_POSITION,
        ],
        responses={200: openapi.response_of("MessagePage"), **openapi.ERROR_RESPONSES},
    )
    def get(self, request: Request, conversation_id: str) -> Response:
        tenant = tenant_of(request)
        conversation_id = checked_path_id(conversation_id, "conversation_id")
        after = _int_param(request, "after", 0, low=0, high=2**63 - 1)
        limit = _int_param(request, "limit", MESSAGES_PAGE_DEFAULT, low=1, high=MESSAGES_PAGE_MAX)
        freshness = _fresh(request, tenant.shard)
        if (
            conversation_summary(shard=tenant.shard, tenant_id=tenant.tenant_id, conversation_id=conversation_id)
            is None
        ):
            raise NotFound("No conversation with this id (or none of its writes is applied yet).")
        messages = conversation_messages(
            shard=tenant.shard,
            tenant_id=tenant.tenant_id,
            conversation_id=conversation_id,
            after=after,
            limit=limit + 1,
        )
        page = messages[:limit]
        return Response(
            {
                "conversation_id": conversation_id,
                "messages": page,
                "next_after": page[-1]["seq"] if page else after,
                "has_more": len(messages) > limit,
                **freshness,
            }
        )


class ConversationMembersView(APIView):
    @extend_schema(
        operation_id="conversation_members_add",
        summary="Add members to a conversation",
        description="1 to 1,000 user ids. A member added later has nothing unread from before they joined.",
        request=openapi.request_of("MembersIn"),
        responses=openapi.WRITE_RESPONSES,
    )
    def post(self, request: Request, conversation_id: str) -> Response:
        return _accept(request, conversation_id, kind="member", item_type=MembersIn, rows_for=members_rows_for)


class ConversationReadView(APIView):
    @extend_schema(
        operation_id="conversation_read_mark",
        summary="Mark a conversation read up to a message",
        description="`up_to` is the `seq` of the last message read; a mark never moves back, and one beyond "
        "the last message means everything so far.",
        request=openapi.request_of("ReadIn"),
        responses=openapi.WRITE_RESPONSES,
    )
    def post(self, request: Request, conversation_id: str) -> Response:
        return _accept(request, conversation_id, kind="read", item_type=ReadIn, rows_for=read_rows_for)


class InboxView(APIView):
    @extend_schema(
        operation_id="user_inbox",
        summary="A user's conversations with unread counts",
        parameters=[
            OpenApiParameter("limit", int, description=f"1 to {INBOX_PAGE_MAX} (default 50), most recent first."),
            MIN_POSITION,
        ],
        responses={200: openapi.response_of("InboxOut"), **openapi.ERROR_RESPONSES},
    )
    def get(self, request: Request, user_id: str) -> Response:
        tenant = tenant_of(request)
        user_id = checked_path_id(user_id, "user_id")
        limit = _int_param(request, "limit", 50, low=1, high=INBOX_PAGE_MAX)
        freshness = _fresh(request, tenant.shard)
        conversations = user_inbox(shard=tenant.shard, tenant_id=tenant.tenant_id, user_id=user_id, limit=limit)
        if not conversations:
            raise NotFound("No inbox for this user: they are not a member of any conversation yet.")
        return Response({"user_id": user_id, "conversations": conversations, **freshness})
