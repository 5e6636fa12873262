"""What a projection is: a name, the kinds of write it reads, and how a slice of the log changes it.

A projection turns log rows into aggregated deltas and applies them with one upsert per read-model row,
never one statement per write. The projector (``readmodels.projector``) feeds it slices in order and
commits its checkpoint in the same transaction.

Two optional extensions (a projection without them keeps working; the commands say what they skip):

* **Repair** (``SupportsRepair``, used by ``readmodels.repair``): ``find_drift(cursor, upto=, since=)``
  runs in a REPEATABLE READ snapshot in which the projection's checkpoint is ``upto``; it recomputes the
  read-model rows of the window ``since``… from the log rows at positions ``<= upto`` and compares them
  with the stored rows of that same snapshot. It returns a ``DriftScan``: how many read-model rows it
  compared and the differences, in whatever form ``fix_drift`` wants. ``fix_drift(cursor, drift)``
  runs later, in a new transaction that holds the checkpoint row (so the projector is paused for it),
  while the projector may have applied positions above ``upto`` in between. Express fixes as deltas
  that commute with the projector's own (``count = count + d``), or recompute under that lock; return
  how many read-model rows were changed.
* **Rebuild** (``SupportsRebuild``, used by ``readmodels.rebuild``): ``tables`` names every read-model
  table the projection writes. Rebuild creates empty copies of them (same columns, constraints and
  index names) in a shadow schema and replays the log from position 0 into them by calling ``apply``
  with ``search_path`` set to the shadow schema first. So ``apply`` (and ``fold_range``) must refer to
  their tables by unqualified name and keep no state outside those tables. The tables are then swapped
  in one transaction. Foreign keys are not copied (read-model tables should not need them), and a
  table also written outside the projector (e.g. by the applier) must not be listed.

And one optional fast path: ``fold_range(cursor, after, upto)`` folds the log rows at positions
``after < p <= upto`` without shipping them to Python, when the deltas are a plain SQL aggregate. The
projector prefers it to ``apply`` when present.
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


@dataclass(frozen=True, slots=True)
class DriftScan:
    #: Read-model rows compared (stored, expected, or both).
    rows_checked: int
    #: One entry per read-model row that differs; opaque to the repair machinery, which only counts it.
    drift: Sequence[Any]


class SupportsRepair(Protocol):
    name: str

    def find_drift(self, cursor: Any, *, upto: int, since: datetime) -> DriftScan:
        """Recompute the window from the log at positions ``<= upto`` and compare with what is stored."""

    def fix_drift(self, cursor: Any, drift: Sequence[Any]) -> int:
        """Correct the read model for ``drift``; returns the read-model rows changed."""


class SupportsRebuild(Protocol):
    name: str
    #: Every read-model table the projection writes, unqualified.
    tables: tuple[str, ...]


class FoldsRanges(Protocol):
    def fold_range(self, cursor: Any, after: int, upto: int) -> None:
        """Fold the log rows at ``after < position <= upto`` server-side."""


def repair_support(projection: Projection) -> SupportsRepair | None:
    if callable(getattr(projection, "find_drift", None)) and callable(getattr(projection, "fix_drift", None)):
        return projection  # type: ignore[return-value]
    return None


def rebuild_support(projection: Projection) -> SupportsRebuild | None:
    tables = getattr(projection, "tables", None)
    if isinstance(tables, tuple) and tables and all(isinstance(t, str) for t in tables):
        return projection  # type: ignore[return-value]
    return None


def range_folder(projection: Projection) -> FoldsRanges | None:
    if callable(getattr(projection, "fold_range", None)):
        return projection  # type: ignore[return-value]
    return None
