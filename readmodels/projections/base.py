"""What a projection is: a name, the kinds of write it reads, and how a slice of the log changes it.

A projection turns log rows into aggregated deltas and applies them with one upsert per read-model row,
never one statement per write. The projector (``readmodels.projector``) feeds it slices in order and
commits its checkpoint in the same transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class LogRow:
    position: int
    tenant_id: uuid.UUID
    write_id: uuid.UUID
    kind: str
    key: str
    payload: dict[str, Any]
    occurred_at: datetime
    received_at: datetime
    applied_at: datetime


class Projection(Protocol):
    #: Stable name: the checkpoint's key, the ``rebuild_projection`` argument, the metrics label.
    name: str
    #: The write kinds this projection reads; other rows are skipped (but still advance the checkpoint).
    kinds: frozenset[str]

    def apply(self, cursor: Any, rows: Sequence[LogRow]) -> None:
        """Fold ``rows`` (ordered by position, all of ``kinds``) into the read model, in the caller's
        transaction, with set-based statements."""
