"""The ceiling: raw psycopg 3 COPY of log-shaped rows into a scratch copy of ``write_log`` on each shard
(partitioned like the log, rows in today's partition).

One connection per shard, 10,000 rows per transaction, rows pre-encoded in COPY text format, so the
figure is what PostgreSQL on this machine can take for this row shape and these indexes.
"""

from __future__ import annotations

import json
import resource
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.stack import BenchEnvironment

ROWS_PER_COPY = 10_000
_TENANT_PLACEHOLDER = b"00000000-0000-0000-0000-0000000000aa"
_COPY = "COPY bench_copy_scratch (tenant_id, write_id, kind, key, payload, occurred_at, received_at, id_day) FROM STDIN"


def copy_block() -> bytes:
    """10,000 rows like the API's: unique write ids; the tenant is swapped in per COPY, so ids stay unique."""
    moment = datetime.now(UTC)
    now, day = moment.isoformat(), moment.date().isoformat()
    lines = []
    for n in range(ROWS_PER_COPY):
        payload = json.dumps({"distinct_id": f"user-{n % 10_000}", "properties": {"path": f"/p/{n % 1000}", "n": n}})
        fields = [
            _TENANT_PLACEHOLDER.decode(),
            str(uuid.uuid4()),
            "event",
            f"page_view_{n % 7}",
            payload,
            now,
            now,
            day,
        ]
        lines.append("\t".join(f.replace("\\", "\\\\") for f in fields))
    return ("\n".join(lines) + "\n").encode()


def run_copy_limit(environment: BenchEnvironment, *, duration: float) -> dict[str, Any]:
    block = copy_block()
    totals: dict[str, int] = {}
    errors: list[str] = []
    cpu_before = _cpu_seconds()
    started_at = time.time()
    stop_at = time.monotonic() + duration

    def copy_into(alias: str) -> None:
        rows = 0
        try:
            with environment.connect(alias) as connection:
                connection.autocommit = False
                while time.monotonic() < stop_at:
                    data = block.replace(_TENANT_PLACEHOLDER, str(uuid.uuid4()).encode())
                    with connection.cursor() as cursor, cursor.copy(_COPY) as copy:
                        copy.write(data)
                    connection.commit()
                    rows += ROWS_PER_COPY
        except Exception as exc:  # reported, not raised, so the other shard's figure is kept
            errors.append(f"{alias}: {exc}")
        totals[alias] = rows

    threads = [threading.Thread(target=copy_into, args=(alias,)) for alias in environment.shard_aliases]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError("; ".join(errors))
    return {
        "rows": sum(totals.values()),
        "started_at": started_at,
        "wall_seconds": time.time() - started_at,
        "cpu_seconds": round(_cpu_seconds() - cpu_before, 3),
    }


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
