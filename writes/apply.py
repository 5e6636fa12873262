"""Bulk apply of one batch to one shard, with poison isolation.

One transaction per batch: COPY the rows into a temporary staging table, take the shard's append lock,
``INSERT … SELECT … ORDER BY … ON CONFLICT DO NOTHING`` into the log, commit. A batch that fails for a
data reason is bisected until each bad row stands alone; those are recorded in ``rejected_writes``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from django.db import DataError, IntegrityError, connections, transaction

logger = logging.getLogger(__name__)

# Every appender on a shard takes this transaction-level advisory lock right before its rows get
# their positions and keeps it until COMMIT, so commit order equals position order: a reader that has
# seen position P never later finds a committed row below P.
APPEND_LOCK_KEY = 0x5752_4954_455F_4C4F  # "WRITE_LO"

# [seq, tenant_id, write_id, kind, key, payload, occurred_at, received_at]
StagedRow = tuple[int, str, str, str, str, str, str, str]

_STAGING_DDL = """
CREATE TEMPORARY TABLE IF NOT EXISTS staging_writes (
    seq integer NOT NULL,
    tenant_id text NOT NULL,
    write_id text NOT NULL,
    kind text NOT NULL,
    key text NOT NULL,
    payload text NOT NULL,
    occurred_at text NOT NULL,
    received_at text NOT NULL
) ON COMMIT DELETE ROWS
"""

_COPY = "COPY staging_writes (seq, tenant_id, write_id, kind, key, payload, occurred_at, received_at) FROM STDIN"

_INSERT = """
INSERT INTO write_log (tenant_id, write_id, kind, key, payload, occurred_at, received_at)
SELECT tenant_id::uuid, write_id::uuid, kind, key, payload::jsonb, occurred_at::timestamptz, received_at::timestamptz
FROM staging_writes
ORDER BY seq
ON CONFLICT (tenant_id, write_id) DO NOTHING
"""

_REJECT = """
INSERT INTO rejected_writes (tenant_id, write_id, kind, key, payload, code, reason)
VALUES (%s::uuid, %s::uuid, %s, %s, %s, %s, %s)
ON CONFLICT (tenant_id, write_id) DO NOTHING
"""

# Errors caused by the data itself: retrying cannot help, so the row is isolated and rejected.
DATA_ERRORS: tuple[type[BaseException], ...] = (
    DataError,
    IntegrityError,
    psycopg.DataError,
    psycopg.IntegrityError,
)


@dataclass(frozen=True, slots=True)
class ApplyResult:
    received: int
    applied: int
    duplicates: int
    rejected: int


def staged_rows(groups: Sequence[Sequence[Any]]) -> list[StagedRow]:
    """Flatten the message's groups into staging rows, numbered in arrival order."""
    rows: list[StagedRow] = []
    seq = 0
    for tenant_id, kind, received_at, items in groups:
        for write_id, key, payload, occurred_at in items:
            rows.append((seq, tenant_id, write_id, kind, key, payload, occurred_at, received_at))
            seq += 1
    return rows


def apply_batch(*, shard: str, groups: Sequence[Sequence[Any]]) -> ApplyResult:
    rows = staged_rows(groups)
    connection = connections[shard]
    rejected: list[tuple[StagedRow, str]] = []
    with transaction.atomic(using=shard), connection.cursor() as cursor:
        cursor.execute(_STAGING_DDL)
        applied = _apply_isolating(cursor, rows, rejected, first=True)
        for row, reason in rejected:
            cursor.execute(_REJECT, _rejection_record(row, reason))
    if rejected:
        logger.warning("shard %s: rejected %d of %d writes", shard, len(rejected), len(rows))
    return ApplyResult(
        received=len(rows),
        applied=applied,
        duplicates=len(rows) - applied - len(rejected),
        rejected=len(rejected),
    )


def _apply_isolating(cursor: Any, rows: list[StagedRow], rejected: list[tuple[StagedRow, str]], *, first: bool) -> int:
    """Apply ``rows`` in a savepoint; on a data error, bisect. Returns the number of rows inserted."""
    try:
        with transaction.atomic(using=cursor.db.alias):
            if not first:
                cursor.execute("DELETE FROM staging_writes")
            _copy_and_insert(cursor, rows)
            return int(cursor.rowcount)
    except DATA_ERRORS as exc:
        if len(rows) == 1:
            rejected.append((rows[0], _reason(exc)))
            return 0
        middle = len(rows) // 2
        return _apply_isolating(cursor, rows[:middle], rejected, first=False) + _apply_isolating(
            cursor, rows[middle:], rejected, first=False
        )


def _copy_and_insert(cursor: Any, rows: list[StagedRow]) -> None:
    with cursor.cursor.copy(_COPY) as copy:
        for row in rows:
            copy.write_row(row)
    cursor.execute("SELECT pg_advisory_xact_lock(%s)", [APPEND_LOCK_KEY])
    cursor.execute(_INSERT)


def _as_uuid(value: str, what: str, problems: list[str]) -> str:
    try:
        return str(uuid.UUID(value))
    except (ValueError, TypeError, AttributeError):
        # Still recorded, under a stable stand-in id, so the rejection is visible rather than failing the batch.
        stand_in = str(uuid.uuid5(uuid.NAMESPACE_URL, f"invalid:{value!r}"))
        problems.append(f"{what} {str(value)[:100]!r} is not a UUID (recorded as {stand_in})")
        return stand_in


def _rejection_record(row: StagedRow, reason: str) -> list[str]:
    """The ``rejected_writes`` values for a bad row, made storable whatever the row holds."""
    _, tenant_id, write_id, kind, key, payload, _, _ = row
    problems: list[str] = []
    tenant = _as_uuid(tenant_id, "tenant id", problems)
    write = _as_uuid(write_id, "write id", problems)
    text = "; ".join([*problems, reason])
    return [
        tenant,
        write,
        str(kind)[:32],
        str(key)[:200],
        str(payload).replace("\x00", "\ufffd"),
        "invalid_write",
        text,
    ]


def _reason(exc: BaseException) -> str:
    message = str(exc).strip().splitlines()
    return message[0][:500] if message else exc.__class__.__name__
