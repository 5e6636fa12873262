"""The hot routes' operations, for the OpenAPI schema and for Django's answers to other methods.

The edge (``api.edge.app``) serves these methods itself and never hands them to Django; a request
that reaches one of these views means the API was started without its edge.
"""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from api import openapi
from api.errors import ServedByEdge


class EventsView(APIView):
    @extend_schema(
        operation_id="events_create",
        summary="Record analytics events",
        description='One event, or `{"batch": [...]}` of 1 to 10,000. Answered once RabbitMQ confirmed.',
        request=openapi.request_of("EventIn"),
        responses=openapi.WRITE_RESPONSES,
    )
    def post(self, request: Request) -> Response:
        raise ServedByEdge


class WriteStatusView(APIView):
    @extend_schema(
        operation_id="writes_status",
        summary="Status of one write",
        description="`pending` (not applied yet), `applied` (with its log `position`) or `rejected` (with "
        "`code` and `reason`). With `wait`, answers as soon as the write is no longer pending.",
        parameters=[
            OpenApiParameter(
                "wait",
                {"type": "number", "minimum": 0, "maximum": 30},
                description="Wait up to this many seconds (≤ 30) while pending.",
            ),
        ],
        responses={200: openapi.response_of("WriteStatus"), **openapi.ERROR_RESPONSES},
    )
    def get(self, request: Request, write_id: str) -> Response:
        raise ServedByEdge
