"""The log's lifecycle at scale: two million rows of an old day are archived and leave the database while
the API takes writes and serves reads, and the archive, replayed elsewhere, gives the same read models."""

from __future__ import annotations

import io
import threading
import time
import uuid
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import pyarrow.parquet as pq
import pytest
from django.core.management import call_command
from django.db import connections

from readmodels.projector import project_shard
from tests.conftest import ALL_DATABASES, TenantHandle, make_tenant
from writes.lifecycle import maintain_log
from writes.partitions import attached_days, create_partitions, partition_name, today

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db(databases=ALL_DATABASES, transaction=True),
    pytest.mark.usefixtures("lifecycle_reset"),
]

ROWS = 2_000_000
SHARD, ELSEWHERE = "shard_0", "shard_1"
DAY = today() - timedelta(days=40)

# Rows as the API would have written them that day: the tenant's three quarters, another tenant's rest,
# with server ids (UUIDv7s of their receipt time: 48 bits of milliseconds, version 7, variant 0b10).
_FILL = """
INSERT INTO write_log (tenant_id, write_id, kind, key, payload, occurred_at, received_at, id_day)
SELECT CASE WHEN i %% 4 = 0 THEN %(other)s::uuid ELSE %(tenant)s::uuid END,
       (lpad(to_hex((extract(epoch FROM at) * 1000)::bigint), 12, '0') || '7' || substr(r, 1, 3) || '8'
        || substr(r, 4, 15))::uuid,
       'event', 'evt_' || (i %% 5), '{"distinct_id": "u", "properties": {"n": 1}}', at, at, %(day)s::date
FROM generate_series(1, %(rows)s) AS i,
     LATERAL (SELECT %(day)s::timestamptz + (i %% 86400) * interval '1 second' AS at,
                     md5(i::text || random()::text) AS r) AS x
"""


def counts(shard: str, tenant_id: uuid.UUID) -> Counter[tuple[str, str, datetime]]:
    found: Counter[tuple[str, str, datetime]] = Counter()
    with connections[shard].cursor() as cursor:
        for table in ("event_counts_hourly", "event_counts_daily"):
            cursor.execute(f"SELECT name, bucket, count FROM {table} WHERE tenant_id = %s", [tenant_id])
            for name, bucket, count in cursor.fetchall():
                found[(table, name, bucket)] = count
    return found


class Traffic(threading.Thread):
    """A client writing one event at a time and reading its stats, until stopped."""

    def __init__(self, tenant: TenantHandle) -> None:
        super().__init__(daemon=True)
        self.tenant = tenant
        self.stopping = threading.Event()
        self.answers: Counter[tuple[str, int]] = Counter()
        self.ids: list[str] = []
        self.slowest = 0.0

    def run(self) -> None:
        while not self.stopping.is_set():
            write_id = str(uuid.uuid4())
            started = time.perf_counter()
            posted = self.tenant.post_json("/api/v1/events", {"id": write_id, "name": "live"})
            read = self.tenant.get("/api/v1/stats/events", interval="day", start=str(DAY), end=str(today()))
            self.slowest = max(self.slowest, time.perf_counter() - started)
            self.answers[("POST", posted.status_code)] += 1
            self.answers[("GET", read.status_code)] += 1
            if posted.status_code == 202:
                self.ids.append(write_id)


def test_millions_of_rows_leave_under_live_traffic_and_replay_to_the_same_read_models(
    live_worker: Any, settings: Any, tmp_path: Any
) -> None:
    settings.WRITES_ARCHIVE_DIR = tmp_path
    tenant, other = make_tenant("at-scale", shard=SHARD), make_tenant("at-scale-other", shard=SHARD)
    with connections[SHARD].cursor() as cursor:
        create_partitions(cursor, [DAY])
        cursor.execute(_FILL, {"tenant": tenant.tenant.id, "other": other.tenant.id, "day": DAY, "rows": ROWS})
        cursor.execute(f"SELECT count(*) FROM {partition_name(DAY)} WHERE uuid7_day(write_id) = %s", [DAY])
        assert cursor.fetchone()[0] == ROWS
    while project_shard(SHARD, time_budget=60):
        pass
    live, other_live = counts(SHARD, tenant.tenant.id), counts(SHARD, other.tenant.id)
    assert sum(n for (table, _, _), n in live.items() if table == "event_counts_daily") == ROWS * 3 // 4

    traffic = Traffic(tenant)
    traffic.start()
    try:
        time.sleep(1)
        settings.WRITES_RETENTION_DAYS = {"event": 30}
        report = maintain_log(SHARD)
        time.sleep(1)
    finally:
        traffic.stopping.set()
        traffic.join(30)

    [outcome] = [o for o in report.days if o.day == DAY]
    assert (outcome.action, outcome.archived_rows) == ("dropped", ROWS)
    assert outcome.swap_seconds < 0.25, outcome  # the partition leaves in well under a second
    with connections[SHARD].cursor() as cursor:
        assert DAY not in attached_days(cursor)
        cursor.execute("SELECT count(*) FROM write_log WHERE id_day = %s", [DAY])
        assert cursor.fetchone()[0] == 0
    # The API kept taking writes and serving reads throughout, and every write it took is applied.
    assert set(traffic.answers) == {("POST", 202), ("GET", 200)}, traffic.answers
    assert traffic.answers[("POST", 202)] >= 5
    assert traffic.slowest < 5, traffic.slowest  # a write and a read never waited for the archive
    for write_id in traffic.ids:
        assert tenant.get(f"/api/v1/writes/{write_id}", wait="20").json()["status"] == "applied"
    # Read models are not the log: retention leaves them as they were.
    assert {k: v for k, v in counts(SHARD, tenant.tenant.id).items() if k[2].date() == DAY} == live

    # The archive holds every row. Replayed into another shard, here for the second tenant (half a million
    # rows, to keep the suite short), it gives the same read models as the live ones.
    files = sorted(tmp_path.rglob("*.parquet"))
    assert sum(pq.ParquetFile(path).metadata.num_rows for path in files) == ROWS
    settings.WRITES_RETENTION_DAYS = {}
    out = io.StringIO()
    replay = [str(tmp_path), "--shard", ELSEWHERE, "--tenant", str(other.tenant.id), "--rebuild-read-models"]
    call_command("replay_archive", *replay, stdout=out)
    assert counts(ELSEWHERE, other.tenant.id) == other_live
    assert sum(n for (table, _, _), n in other_live.items() if table == "event_counts_daily") == ROWS // 4
    assert counts(ELSEWHERE, tenant.tenant.id) == Counter()
