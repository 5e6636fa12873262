"""Every projection the projector runs, in the order it runs them."""

from __future__ import annotations

from readmodels.projections.base import (
    DriftScan,
    LogRow,
    Projection,
    SupportsRebuild,
    SupportsRepair,
    rebuild_support,
    repair_support,
)
from readmodels.projections.chat import ChatProjection
from readmodels.projections.events import EventCounts
from readmodels.projections.ledger import LedgerProjection

PROJECTIONS: list[Projection] = [EventCounts(), ChatProjection(), LedgerProjection()]


def projection_named(name: str) -> Projection:
    for projection in PROJECTIONS:
        if projection.name == name:
            return projection
    known = ", ".join(p.name for p in PROJECTIONS) or "none"
    raise LookupError(f"No projection named {name!r} (known: {known}).")


__all__ = [
    "PROJECTIONS",
    "DriftScan",
    "LogRow",
    "Projection",
    "SupportsRebuild",
    "SupportsRepair",
    "projection_named",
    "rebuild_support",
    "repair_support",
]
