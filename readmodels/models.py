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
