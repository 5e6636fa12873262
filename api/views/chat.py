"""Chat over HTTP: conversations, their messages and inboxes, read from the read models with
``as_of`` and ``lag_seconds``. Messages, members and read marks are writes, served by the edge
(``api.edge.app``); their operations here document them in the schema."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from api import openapi
from api.errors import ServedByEdge
from api.openapi import MIN_POSITION
from api.params import int_param, min_position_param, path_id, with_timed_out
from api.views.health import tenant_of
from readmodels.projections.chat import ChatProjection
from readmodels.selectors.chat import (
    INBOX_PAGE_MAX,
    MESSAGES_PAGE_DEFAULT,
    MESSAGES_PAGE_MAX,
    conversation_messages,
    conversation_summary,
    user_inbox,
)
from readmodels.selectors.freshness import projection_freshness

PROJECTION = ChatProjection.name


def _fresh(request: Request, shard: str) -> dict[str, Any]:
    """``as_of``, ``lag_seconds`` and ``timed_out``; the edge has waited for ``min_position`` already."""
    min_position = min_position_param(request.query_params.get("min_position"))
    return with_timed_out(projection_freshness(shard, PROJECTION), min_position)


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
            conversation_id=path_id(conversation_id, "conversation_id"),
        )
        if summary is None:
            raise NotFound("No conversation with this id (or none of its writes is applied yet).")
        return Response({**summary, **freshness})


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
        raise ServedByEdge

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
        conversation_id = path_id(conversation_id, "conversation_id")
        after = int_param(request.query_params.get("after"), "after", default=0, low=0, high=2**63 - 1)
        limit = int_param(
            request.query_params.get("limit"), "limit", default=MESSAGES_PAGE_DEFAULT, low=1, high=MESSAGES_PAGE_MAX
        )
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
        raise ServedByEdge


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
        raise ServedByEdge


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
        user_id = path_id(user_id, "user_id")
        limit = int_param(request.query_params.get("limit"), "limit", default=50, low=1, high=INBOX_PAGE_MAX)
        freshness = _fresh(request, tenant.shard)
        conversations = user_inbox(shard=tenant.shard, tenant_id=tenant.tenant_id, user_id=user_id, limit=limit)
        if not conversations:
            raise NotFound("No inbox for this user: they are not a member of any conversation yet.")
        return Response({"user_id": user_id, "conversations": conversations, **freshness})
