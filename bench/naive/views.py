"""The baselines' HTTP side: plain DRF views, one event per request, same API-key authentication."""

from __future__ import annotations

from django.utils import timezone
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from api.views.health import tenant_of
from bench.naive.serializers import NaiveEventSerializer
from bench.naive.tasks import naive_insert_event, naive_queue_name


class NaiveEventsView(APIView):
    """Validate with a ModelSerializer and ``objects.create`` the row before answering."""

    def post(self, request: Request) -> Response:
        tenant = tenant_of(request)
        serializer = NaiveEventSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        serializer.save(tenant_id=tenant.tenant_id, received_at=timezone.now())
        return Response(serializer.data, status=status.HTTP_201_CREATED)


class NaiveCeleryEventsView(APIView):
    """Validate with the same serializer, then enqueue one Celery task per event and answer 202."""

    def post(self, request: Request) -> Response:
        tenant = tenant_of(request)
        serializer = NaiveEventSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        fields = {key: value for key, value in request.data.items() if key in serializer.validated_data}
        naive_insert_event.apply_async(
            (tenant.shard, str(tenant.tenant_id), timezone.now().isoformat(), fields), queue=naive_queue_name()
        )
        return Response({"accepted": 1}, status=status.HTTP_202_ACCEPTED)
