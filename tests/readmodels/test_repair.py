"""Repair on real PostgreSQL: corrupted counters are restored exactly and the drift is recorded, also
while writes and the projector keep going."""

from __future__ import annotations

import functools
import io
import json
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from django.core.management import call_command
from django.db import connections
from django.utils import timezone

from readmodels.models import RepairRun
from readmodels.projections.events import EventCounts
from readmodels.projector import project_shard
from readmodels.repair import RepairOutcome, maintenance_lock, repair_projection
from readmodels.tasks import repair_shard_task
from tests.conftest import ALL_DATABASES
from tests.readmodels.helpers import apply_events, assert_counts_exact, expected_counts

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)

SHARD = "shard_1"


def recent(minutes_ago: int) -> datetime:
    return timezone.now().replace(second=0, microsecond=0) - timedelta(minutes=minutes_ago)


def load(tenant_id: uuid.UUID, n: int, *, offset: int = 0) -> None:
    apply_events(SHARD, tenant_id, [(f"evt_{i % 5}", recent((i * 7 + offset) % 600)) for i in range(n)])


def corrupt(tenant_id: uuid.UUID) -> int:
    """Three kinds of damage, straight in SQL: a wrong count, a lost row, a row that should not exist."""
    with connections[SHARD].cursor() as cursor:
        cursor.execute(
            "UPDATE event_counts_hourly SET count = count + 5 WHERE id = "
            "(SELECT min(id) FROM event_counts_hourly WHERE tenant_id = %s)",
            [tenant_id],
        )
        cursor.execute(
            "DELETE FROM event_counts_daily WHERE id = (SELECT min(id) FROM event_counts_daily WHERE tenant_id = %s)",
            [tenant_id],
        )
        cursor.execute(
            "INSERT INTO event_counts_hourly (tenant_id, name, bucket, count) VALUES (%s, 'ghost', %s, 3)",
            [tenant_id, recent(30).replace(minute=0)],
        )
    return 3


def test_repair_restores_exact_counts_and_records_the_drift():
    tenant_id = uuid.uuid4()
    load(tenant_id, 400)
    project_shard(SHARD)
    assert_counts_exact(SHARD)
    damaged = corrupt(tenant_id)

    out = io.StringIO()
    call_command("repair", "--shard", SHARD, "--since", "24h", "--json", stdout=out)

    assert_counts_exact(SHARD)
    report = json.loads(out.getvalue().splitlines()[0])
    assert report["outcome"] == "ok"
    assert report["drift_found"] == damaged
    assert report["drift_fixed"] == damaged
    assert report["rows_checked"] >= len(expected_counts(SHARD, "hour"))
    run = RepairRun.objects.using(SHARD).get(projection="event_counts")
    assert (run.projection, run.shard, run.drift_found, run.drift_fixed) == ("event_counts", SHARD, 3, 3)
    assert run.rows_checked == report["rows_checked"]
    assert run.window_start is not None
    assert run.duration_seconds >= 0

    # A second run finds nothing left to fix.
    again = repair_projection(shard=SHARD, projection=EventCounts(), since=timezone.now() - timedelta(hours=24))
    assert (again.drift_found, again.drift_fixed) == (0, 0)


def test_repair_leaves_buckets_before_its_window_alone():
    tenant_id = uuid.uuid4()
    old = datetime.now(UTC) - timedelta(days=10)
    apply_events(SHARD, tenant_id, [("old", old)] * 3)
    project_shard(SHARD)
    with connections[SHARD].cursor() as cursor:
        cursor.execute("UPDATE event_counts_daily SET count = 99 WHERE name = 'old'")
    result = repair_projection(shard=SHARD, projection=EventCounts(), since=timezone.now() - timedelta(days=2))
    assert result.drift_found == 0
    with connections[SHARD].cursor() as cursor:
        cursor.execute("SELECT count FROM event_counts_daily WHERE name = 'old'")
        assert cursor.fetchone()[0] == 99


def test_repair_concurrent_with_ingestion_and_projector_ends_exact():
    tenant_ids = [uuid.uuid4() for _ in range(3)]
    for tenant_id in tenant_ids:
        load(tenant_id, 200)
    project_shard(SHARD)
    corrupt(tenant_ids[0])
    stop = threading.Event()
    errors: list[BaseException] = []

    def guarded(work: Callable[[], None]) -> threading.Thread:
        def run() -> None:
            try:
                work()
            except BaseException as exc:
                errors.append(exc)
            finally:
                connections.close_all()

        return threading.Thread(target=run)

    def ingest(tenant_id: uuid.UUID, offset: int) -> None:
        for batch in range(15):
            load(tenant_id, 100, offset=offset + batch)

    def project() -> None:
        while not stop.is_set():
            project_shard(SHARD)
            time.sleep(0.005)

    writers = [guarded(functools.partial(ingest, t, o)) for o, t in enumerate(tenant_ids)]
    projector = guarded(project)
    for thread in [*writers, projector]:
        thread.start()
    runs: list[RepairOutcome] = []
    while any(w.is_alive() for w in writers) or len(runs) < 3:
        runs.append(
            repair_projection(shard=SHARD, projection=EventCounts(), since=timezone.now() - timedelta(hours=24))
        )
    for writer in writers:
        writer.join()
    stop.set()
    projector.join()
    assert not errors, errors

    project_shard(SHARD)
    assert_counts_exact(SHARD)
    assert sum(expected_counts(SHARD, "day").values()) == 3 * 200 + 3 * 15 * 100
    assert runs[0].drift_found == 3  # the corruption, found while writes were flowing
    assert all(r.outcome == "ok" for r in runs)
    assert sum(r.drift_fixed for r in runs) == 3  # and nothing the projector did was mistaken for drift


def test_repair_skips_a_projection_without_repair_support():
    class CountsOnly:
        name = "counts_only"
        kinds = frozenset({"event"})

        def apply(self, cursor, rows):
            pass

    result = repair_projection(shard=SHARD, projection=CountsOnly())
    assert result.outcome == "skipped"
    assert "does not support repair" in result.message


def test_repair_beat_task_repairs_every_projection_of_its_shard():
    tenant_id = uuid.uuid4()
    load(tenant_id, 50)
    project_shard(SHARD)
    corrupt(tenant_id)
    assert repair_shard_task(SHARD) == {"drift_found": 3, "drift_fixed": 3}
    assert_counts_exact(SHARD)


def test_repair_is_skipped_and_recorded_while_another_repair_or_rebuild_holds_the_projection():
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        try:
            with maintenance_lock(SHARD, "event_counts") as acquired:
                assert acquired
                held.set()
                release.wait(10)
        finally:
            connections.close_all()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(10)
        result = repair_projection(shard=SHARD, projection=EventCounts())
    finally:
        release.set()
        holder.join()
    assert result.outcome == "skipped"
    assert "another repair or rebuild" in result.message
    assert RepairRun.objects.using(SHARD).get(projection="event_counts").outcome == "skipped"
