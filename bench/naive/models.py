"""The baselines' table: an ordinary Django model with a row per event, on the tenant's shard.

``received_at`` is when the API accepted the event and ``applied_at`` when the row was inserted, so the
queued baseline's lag is measured the same way as the write log's.
"""

from __future__ import annotations

from typing import ClassVar

from django.db import models
from django.db.models.functions import Now


class NaiveEvent(models.Model):
    SHARD_RESIDENT: ClassVar[bool] = True

    tenant_id = models.UUIDField()
    name = models.CharField(max_length=200)
    distinct_id = models.CharField(max_length=200, null=True, blank=True)  # noqa: DJ001 - absent, as sent
    timestamp = models.DateTimeField(null=True, blank=True)
    properties = models.JSONField(null=True, blank=True)
    received_at = models.DateTimeField()
    applied_at = models.DateTimeField(db_default=Now())

    class Meta:
        db_table = "bench_naive_event"

    def __str__(self) -> str:
        return f"{self.name} ({self.tenant_id})"
