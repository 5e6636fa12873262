"""The read side's figures for the operations page, ``writes_status`` and ``/metrics``: each
projection's lag and its last repair run, per shard (registered in WRITES_PROJECTION_STATUS_SOURCES)."""

from __future__ import annotations

from django.db import connections

from readmodels.models import RepairRun
from readmodels.projections import PROJECTIONS
from readmodels.projector import freshness
from writes.operations import ProjectionStatus


def projection_status(shard: str) -> list[ProjectionStatus]:
    with connections[shard].cursor() as cursor:
        fresh = {projection.name: freshness(cursor, projection.name) for projection in PROJECTIONS}
    last_runs: dict[str, RepairRun] = {}
    for run in RepairRun.objects.using(shard).filter(outcome=RepairRun.Outcome.OK).order_by("-started_at")[:50]:
        last_runs.setdefault(run.projection, run)
    statuses = []
    for name, state in fresh.items():
        last = last_runs.get(name)
        statuses.append(
            ProjectionStatus(
                shard=shard,
                projection=name,
                lag_positions=state.behind,
                checkpoint=state.position,
                lag_seconds=state.lag_seconds,
                last_repair_at=last.finished_at if last else None,
                last_repair_drift=last.drift_found if last else None,
            )
        )
    return statuses
