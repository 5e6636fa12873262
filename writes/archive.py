"""Archives of the log: a day's rows of some kinds leave the database as Parquet files before retention
drops them, and come back through the applier (``replay_archive``) when that history is wanted again.

Layout under ``WRITES_ARCHIVE_DIR``: ``<shard>/<YYYY-MM-DD>/<kind>.parquet``, one file per kind of a
day (zstd, row groups of ``ROW_GROUP_ROWS``), and ``<shard>/<YYYY-MM-DD>/manifest.json``, which lists
every complete file with its rows, positions, size and SHA-256, and the columns. Invariants:

- A file is written under a temporary name, fsynced and renamed into place; the manifest is rewritten
  the same way after it, so a manifest never lists a file that is not whole. A crash between the two
  leaves the earlier file's entry (``verify_archive`` reports the mismatch; archiving the kind again
  repairs it).
- A manifest changes only under its day's lock (``.lock``, flock): archiving some kinds keeps the other
  kinds' entries, and an erasure rewriting a day never interleaves with an archive of it.
- Rows stream from a server-side cursor, one row group at a time: memory never holds the day.
- Replay re-applies rows through ``writes.apply.apply_batch`` in position order, with their own ids and
  receipt times: ids are idempotency keys, so a second replay applies nothing, and every row gets the
  ``id_day`` it had.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import heapq
import json
import os
import re
import secrets
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from django.conf import settings
from django.db import connections, transaction

from writes.apply import ApplyResult, apply_batch
from writes.errors import ArchiveError
from writes.ids import canonical_uuid
from writes.ledger import TRANSFER_KIND
from writes.partitions import day_number, partition_name, today

FORMAT = "write-log-archive"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
COMPRESSION: Final = "zstd"
#: Rows per Parquet row group: what memory holds at a time (as Arrow data) while a file is written.
ROW_GROUP_ROWS = 100_000
#: Rows per fetch from the server-side cursor.
FETCH_ROWS = 10_000
#: Rows per ``apply_batch`` transaction of a replay.
REPLAY_CHUNK_ROWS = 5_000
# Rows a replay holds per open file (several are open at once where their positions interleave).
_READ_BATCH_ROWS = 10_000
# A temporary file this old is left over from a crash (an archive writes one in seconds): erasure
# removes it, as it may hold the tenant's rows.
STALE_TEMPORARY_SECONDS = 3_600
_LOCK = ".lock"
_TEMPORARY_SUFFIX = ".tmp"

_TIMESTAMP = pa.timestamp("us", tz="UTC")

#: The log's columns: (name, type in the log, type in the files).
COLUMNS: tuple[tuple[str, str, pa.DataType], ...] = (
    ("position", "bigint", pa.int64()),
    ("tenant_id", "uuid", pa.string()),
    ("write_id", "uuid", pa.string()),
    ("kind", "varchar(32)", pa.string()),
    ("key", "varchar(200)", pa.string()),
    ("payload", "jsonb", pa.string()),
    ("occurred_at", "timestamptz", _TIMESTAMP),
    ("received_at", "timestamptz", _TIMESTAMP),
    ("applied_at", "timestamptz", _TIMESTAMP),
    ("id_day", "date", pa.date32()),
)
SCHEMA = pa.schema([pa.field(name, parquet_type, nullable=False) for name, _, parquet_type in COLUMNS])

# uuid and jsonb as their canonical text, times as microseconds and the day as days since 1970-01-01:
# PostgreSQL does the formatting, and pyarrow takes plain ints and strings without a Python object per value.
_SELECT = """
SELECT position, tenant_id::text, write_id::text, kind, key, payload::text,
       (extract(epoch FROM occurred_at) * 1000000)::bigint,
       (extract(epoch FROM received_at) * 1000000)::bigint,
       (extract(epoch FROM applied_at) * 1000000)::bigint,
       id_day - date '1970-01-01'
FROM {table} WHERE kind = %s ORDER BY position
"""

# Kinds and shard aliases name files and directories: nothing that could leave the archive.
_KIND = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_ALIAS = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True, slots=True)
class ArchivedFile:
    """One kind of one day, as the manifest lists it."""

    kind: str
    path: Path
    rows: int
    min_position: int
    max_position: int
    sha256: str
    bytes: int


@dataclass(frozen=True, slots=True)
class ArchivedDay:
    """What ``archive_day`` wrote: the day's directory, the rows of each kind asked for (0 for a kind
    the partition does not hold: no file is written for it), and the highest position archived."""

    shard: str
    day: date
    directory: Path
    rows: Mapping[str, int]
    files: tuple[ArchivedFile, ...]
    max_position: int | None


def archive_root() -> Path:
    return Path(settings.WRITES_ARCHIVE_DIR)


def day_directory(shard: str, day: date) -> Path:
    return archive_root() / _checked(shard, _ALIAS, "shard alias") / day.isoformat()


# --- writing ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Written:
    """A complete Parquet file under its temporary name, not yet in place."""

    kind: str
    temporary: Path
    rows: int
    min_position: int
    max_position: int
    sha256: str
    bytes: int


def archive_day(*, shard: str, day: date, kinds: Sequence[str], row_group_rows: int = ROW_GROUP_ROWS) -> ArchivedDay:
    """Write the rows of ``kinds`` in ``shard``'s partition of ``day`` to ``<kind>.parquet`` files and
    list them in the day's manifest, replacing what an earlier archive of the same kinds wrote and
    keeping the other kinds' entries.

    A kind without rows writes nothing and leaves an earlier file of that kind alone: archiving again
    after retention removed the rows must not erase their archive. All kinds are read in one snapshot
    (REPEATABLE READ) when the call opens the transaction itself.
    """
    wanted = [_checked(kind, _KIND, "kind") for kind in dict.fromkeys(kinds)]
    directory = day_directory(shard, day)
    if shard not in settings.DATABASES:
        raise ArchiveError(f"No database {shard!r} to archive.")
    table = partition_name(day)
    metadata = {"shard": shard, "day": day.isoformat()}
    directory.mkdir(parents=True, exist_ok=True)
    written: list[_Written] = []
    connection = connections[shard]
    outermost = not connection.in_atomic_block
    try:
        with transaction.atomic(using=shard):
            with connection.cursor() as cursor:
                if outermost:  # nothing ran in this transaction yet
                    cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                cursor.execute("SELECT to_regclass(%s)", [table])
                if cursor.fetchone()[0] is None:
                    raise ArchiveError(f"{shard} has no partition {table} (the day was never written, or is gone).")
            for kind in wanted:
                temporary = _temporary_path(directory, f"{kind}.parquet")
                result = _write_kind(
                    connection.connection, table, kind, temporary, {**metadata, "kind": kind}, row_group_rows
                )
                if result is not None:
                    written.append(result)
        with _day_lock(directory):
            manifest = _read_manifest(directory) or _new_manifest(shard, day)
            for result in written:
                os.replace(result.temporary, directory / f"{result.kind}.parquet")
            _fsync_directory(directory)
            _set_entries(manifest, [_entry(result) for result in written])
            _write_manifest(directory, manifest)
    finally:
        for result in written:
            result.temporary.unlink(missing_ok=True)
    rows = dict.fromkeys(wanted, 0) | {result.kind: result.rows for result in written}
    files = tuple(_archived_file(directory, _entry(result)) for result in written)
    return ArchivedDay(
        shard=shard,
        day=day,
        directory=directory,
        rows=rows,
        files=files,
        max_position=max((result.max_position for result in written), default=None),
    )


def _write_kind(
    raw_connection: Any, table: str, kind: str, temporary: Path, metadata: dict[str, str], row_group_rows: int
) -> _Written | None:
    """Stream one kind of the partition into a Parquet file at ``temporary``; ``None`` when it has no rows.

    Rows are fetched ``FETCH_ROWS`` at a time and turned into Arrow batches at once (Python objects
    cost several times the Arrow bytes); a row group is written when ``row_group_rows`` are buffered."""
    writer: pq.ParquetWriter | None = None
    buffered: list[pa.RecordBatch] = []
    pending = rows = 0
    first = last = 0
    try:
        # A named cursor is a server-side one: the rows come a fetch at a time, never all at once.
        with raw_connection.cursor(name=f"archive_{kind}") as cursor:
            cursor.execute(_SELECT.format(table=table), [kind])
            while chunk := cursor.fetchmany(min(FETCH_ROWS, row_group_rows)):
                if writer is None:
                    writer = _parquet_writer(temporary, metadata)
                    first = int(chunk[0][0])
                buffered.append(_record_batch(chunk))
                pending += len(chunk)
                rows += len(chunk)
                last = int(chunk[-1][0])
                if pending >= row_group_rows:
                    writer.write_table(pa.Table.from_batches(buffered), row_group_size=row_group_rows)
                    buffered, pending = [], 0
        if writer is not None and buffered:
            writer.write_table(pa.Table.from_batches(buffered), row_group_size=row_group_rows)
    finally:
        if writer is not None:
            writer.close()
    if writer is None:
        return None
    _fsync_file(temporary)
    digest, size = _digest(temporary)
    return _Written(kind, temporary, rows, first, last, digest, size)


def _record_batch(rows: Sequence[Sequence[Any]]) -> pa.RecordBatch:
    columns = zip(*rows, strict=True)
    arrays = [
        pa.array(values, type=parquet_type) for values, (_, _, parquet_type) in zip(columns, COLUMNS, strict=True)
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=SCHEMA)


def _parquet_writer(path: Path, metadata: Mapping[str, str], schema: pa.Schema | None = None) -> pq.ParquetWriter:
    if schema is None:
        description = {"format": FORMAT, "format_version": FORMAT_VERSION, **metadata}
        schema = SCHEMA.with_metadata({FORMAT: json.dumps(description)})
    return pq.ParquetWriter(str(path), schema, compression=COMPRESSION)


# --- manifests --------------------------------------------------------------------------------


def _new_manifest(shard: str, day: date) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "shard": shard,
        "day": day.isoformat(),
        "created_at": _now(),
        "updated_at": _now(),
        "compression": COMPRESSION,
        "columns": [
            {"name": name, "log_type": log_type, "parquet_type": str(parquet_type)}
            for name, log_type, parquet_type in COLUMNS
        ],
        "files": [],
    }


def _entry(written: _Written) -> dict[str, Any]:
    return {
        "file": f"{written.kind}.parquet",
        "kind": written.kind,
        "rows": written.rows,
        "min_position": written.min_position,
        "max_position": written.max_position,
        "sha256": written.sha256,
        "bytes": written.bytes,
        "written_at": _now(),
    }


def _set_entries(manifest: dict[str, Any], entries: Sequence[dict[str, Any]]) -> None:
    """Replace the entries of these kinds, keep the others."""
    by_kind = {entry["kind"]: entry for entry in manifest["files"]}
    by_kind.update((entry["kind"], entry) for entry in entries)
    manifest["files"] = [by_kind[kind] for kind in sorted(by_kind)]


_ENTRY_FIELDS: dict[str, type] = {
    "file": str,
    "kind": str,
    "rows": int,
    "min_position": int,
    "max_position": int,
    "sha256": str,
    "bytes": int,
}


def _read_manifest(directory: Path) -> dict[str, Any] | None:
    """The day's manifest, ``None`` when it has none; ``ArchiveError`` when it cannot be trusted."""
    path = directory / MANIFEST
    try:
        manifest = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ArchiveError(f"{path}: unreadable manifest ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArchiveError(f"{path}: not a {FORMAT} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArchiveError(f"{path}: format version {manifest.get('format_version')!r}, expected {FORMAT_VERSION}")
    files = manifest.get("files")
    if not isinstance(files, list) or not all(
        isinstance(entry, dict) and all(isinstance(entry.get(k), t) for k, t in _ENTRY_FIELDS.items())
        for entry in files
    ):
        raise ArchiveError(f"{path}: malformed list of files")
    for entry in files:
        if entry["file"] != f"{entry['kind']}.parquet" or not _KIND.match(entry["kind"]):
            raise ArchiveError(f"{path}: unexpected file name {entry['file']!r}")
    try:
        manifest["day_date"] = date.fromisoformat(str(manifest.get("day")))
    except ValueError as exc:
        raise ArchiveError(f"{path}: bad day {manifest.get('day')!r}") from exc
    if not isinstance(manifest.get("shard"), str):
        raise ArchiveError(f"{path}: no shard")
    return manifest


def _write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    stored = {key: value for key, value in manifest.items() if key != "day_date"}
    stored["updated_at"] = _now()
    _replace_atomically(directory / MANIFEST, json.dumps(stored, indent=2).encode() + b"\n")


def _archived_file(directory: Path, entry: Mapping[str, Any]) -> ArchivedFile:
    return ArchivedFile(
        kind=entry["kind"],
        path=directory / entry["file"],
        rows=entry["rows"],
        min_position=entry["min_position"],
        max_position=entry["max_position"],
        sha256=entry["sha256"],
        bytes=entry["bytes"],
    )


def day_directories(path: Path) -> list[Path]:
    """The archived days at ``path``: a day directory, a shard's (its days) or the archive root (every
    shard's days), each shard's days in day order."""
    if (path / MANIFEST).is_file():
        return [path]
    if not path.is_dir():
        raise ArchiveError(f"{path}: no such directory")
    days = sorted(found.parent for found in path.glob(f"*/{MANIFEST}"))
    return days or sorted(found.parent for found in path.glob(f"*/*/{MANIFEST}"))


# --- verifying --------------------------------------------------------------------------------


def verify_archive(path: Path | str) -> list[str]:
    """The problems of the archive at ``path`` (a day, a shard or the root): a manifest that cannot be
    read, a listed file missing, of another size, checksum, row count, schema or positions. Empty when
    the archive is sound."""
    try:
        directories = day_directories(Path(path))
    except ArchiveError as exc:
        return [str(exc)]
    if not directories:
        return [f"{path}: no {MANIFEST} at or under it"]
    return [problem for directory in directories for problem in _day_problems(directory)]


def _day_problems(directory: Path) -> list[str]:
    try:
        manifest = _read_manifest(directory)
    except ArchiveError as exc:
        return [str(exc)]
    if manifest is None:
        return [f"{directory}: no {MANIFEST}"]
    problems = []
    if directory.name != manifest["day"] or directory.parent.name != manifest["shard"]:
        problems.append(f"{directory}: the manifest is of {manifest['shard']}/{manifest['day']}")
    for entry in manifest["files"]:
        problems.extend(_file_problems(_archived_file(directory, entry)))
    return problems


def _file_problems(archived: ArchivedFile) -> list[str]:
    path = archived.path
    if not path.is_file():
        return [f"{path}: missing"]
    digest, size = _digest(path)
    if size != archived.bytes:
        return [f"{path}: {size} bytes, the manifest says {archived.bytes}"]
    if digest != archived.sha256:
        return [f"{path}: checksum mismatch (sha256 {digest}, the manifest says {archived.sha256})"]
    problems = []
    try:
        parquet = pq.ParquetFile(str(path))
        if not parquet.schema_arrow.equals(SCHEMA):
            problems.append(f"{path}: the columns differ from the log's")
        if parquet.metadata.num_rows != archived.rows:
            problems.append(f"{path}: {parquet.metadata.num_rows} rows, the manifest says {archived.rows}")
        low, high = _position_bounds(parquet.read(columns=["position"]).column("position"))
        if (low, high) != (archived.min_position, archived.max_position):
            problems.append(
                f"{path}: positions {low}..{high}, the manifest says {archived.min_position}..{archived.max_position}"
            )
    except (pa.ArrowException, OSError) as exc:
        problems.append(f"{path}: unreadable ({exc})")
    return problems


# --- replaying --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReplayedDay:
    shard: str  # the shard the archive came from
    day: date
    rows: Mapping[str, int]  # per kind, as listed (all tenants)


@dataclass
class ReplayResult:
    """One source shard's archive replayed into ``shard``."""

    source: str
    shard: str
    days: list[ReplayedDay] = field(default_factory=list)
    read: int = 0
    applied: int = 0
    duplicates: int = 0
    rejected: int = 0
    diverted: int = 0

    def add(self, rows: int, result: ApplyResult) -> None:
        self.read += rows
        self.applied += result.applied
        self.duplicates += result.duplicates
        self.rejected += result.rejected
        self.diverted += result.diverted


@dataclass(frozen=True, slots=True)
class _Plan:
    source: str
    shard: str
    days: tuple[ReplayedDay, ...]
    files: tuple[tuple[date, ArchivedFile], ...]


def replay_archive(
    *, path: Path | str, shard: str | None = None, tenant_id: str | None = None, chunk_rows: int = REPLAY_CHUNK_ROWS
) -> list[ReplayResult]:
    """Apply the archive at ``path`` (a day, a shard or the root) again, in position order, through
    ``apply_batch``: into ``shard``, or each day into the shard its manifest names; only ``tenant_id``'s
    rows when given. Checks everything before applying anything: the archive (``verify_archive``) and
    whether the target would take the rows (retention, retired days, the ledger accounts that transfers
    name); refuses with ``ArchiveError`` otherwise. Safe to repeat: ids are idempotency keys."""
    directories = day_directories(Path(path))
    if not directories:
        raise ArchiveError(f"{path}: no {MANIFEST} at or under it")
    problems = [problem for directory in directories for problem in _day_problems(directory)]
    if problems:
        raise ArchiveError("The archive is damaged; nothing was replayed:\n  " + "\n  ".join(problems))
    tenant = _tenant_id(tenant_id) if tenant_id is not None else None
    plans = _plans(directories, shard)
    refusals = [refusal for plan in plans for refusal in _refusals(plan, tenant)]
    if refusals:
        raise ArchiveError("Nothing was replayed:\n  " + "\n  ".join(refusals))
    return [_replay(plan, tenant, chunk_rows) for plan in plans]


def _plans(directories: Sequence[Path], shard: str | None) -> list[_Plan]:
    by_source: dict[str, list[tuple[date, list[ArchivedFile]]]] = {}
    for directory in directories:
        manifest = _read_manifest(directory)
        if manifest is None:  # verified just before; gone since
            raise ArchiveError(f"{directory}: no {MANIFEST}")
        files = [_archived_file(directory, entry) for entry in manifest["files"]]
        by_source.setdefault(manifest["shard"], []).append((manifest["day_date"], files))
    plans = []
    for source, days in by_source.items():
        target = shard or source
        if target not in settings.SHARD_ALIASES:
            known = ", ".join(settings.SHARD_ALIASES)
            raise ArchiveError(f"No shard {target!r} here (shards: {known}); name one with --shard.")
        days.sort(key=lambda item: item[0])
        plans.append(
            _Plan(
                source=source,
                shard=target,
                days=tuple(ReplayedDay(source, day, {f.kind: f.rows for f in files}) for day, files in days),
                files=tuple((day, f) for day, files in days for f in files),
            )
        )
    return plans


def _refusals(plan: _Plan, tenant: str | None) -> list[str]:
    """Why ``plan.shard`` would not take the rows as they were (each is checked before any is applied:
    the applier records a refused write as rejected for good)."""
    refusals = []
    current = day_number(today())
    for day, archived in plan.files:
        keep = settings.WRITES_RETENTION_DAYS.get(archived.kind)
        if keep is not None and day_number(day) < current - keep:
            refusals.append(
                f"{archived.path}: {archived.kind} writes are kept {keep} days (WRITES_RETENTION_DAYS) and this "
                f"day is older; the applier would refuse them. Run the replay with a longer retention for "
                f"{archived.kind}, or none (WRITES_RETENTION_DAYS unset)."
            )
    days = sorted({day for day, _ in plan.files})
    with connections[plan.shard].cursor() as cursor:
        cursor.execute("SELECT day, state, retired_kinds FROM log_partitions WHERE day = ANY(%s)", [days])
        retired = {day: (state, set(kinds or ())) for day, state, kinds in cursor.fetchall()}
    for day, archived in plan.files:
        state, kinds = retired.get(day, ("attached", set()))
        if state == "retired" or archived.kind in kinds:
            refusals.append(
                f"{archived.path}: {plan.shard} has retired {archived.kind} writes of {day}; replay into a "
                "database where that day is not retired (a fresh one)."
            )
    refusals.extend(_account_refusals(plan, tenant))
    return refusals


_ACCOUNTS = """
WITH wanted AS (SELECT (e->>0)::uuid AS tenant_id, e->>1 AS account_id FROM json_array_elements(%s::json) e)
SELECT a.tenant_id::text, a.account_id, a.currency
FROM ledger_accounts a JOIN wanted ON a.tenant_id = wanted.tenant_id AND a.account_id = wanted.account_id
"""


def _account_refusals(plan: _Plan, tenant: str | None) -> list[str]:
    """Accounts are created synchronously, not written to the log: transfers replayed into a shard that
    lacks them would be rejected (``unknown_account``), and a rejection is final."""
    needed: dict[tuple[str, str], str] = {}
    for _, archived in plan.files:
        if archived.kind != TRANSFER_KIND:
            continue
        for batch in _batches(archived.path, ["tenant_id", "payload"], tenant):
            for tenant_id, payload in zip(
                batch.column("tenant_id").to_pylist(), batch.column("payload").to_pylist(), strict=True
            ):
                transfer = json.loads(str(payload))
                for side in ("debit_account", "credit_account"):
                    needed[(str(tenant_id), str(transfer[side]))] = str(transfer["currency"])
    if not needed:
        return []
    with connections[plan.shard].cursor() as cursor:
        cursor.execute(_ACCOUNTS, [json.dumps(sorted(needed))])
        found = {(tenant_id, account): currency for tenant_id, account, currency in cursor.fetchall()}
    wrong = []
    for (tenant_id, account), currency in sorted(needed.items()):
        there = found.get((tenant_id, account))
        if there is None:
            wrong.append(f"{tenant_id}/{account} ({currency}, missing)")
        elif there != currency:
            wrong.append(f"{tenant_id}/{account} ({currency}, there {there})")
    if not wrong:
        return []
    shown = ", ".join(wrong[:10]) + (f" and {len(wrong) - 10} more" if len(wrong) > 10 else "")
    return [
        f"{plan.shard} lacks ledger accounts (or holds them in another currency) that the archived transfers "
        f"name: {shown}. Create them there first (POST /api/v1/ledger/accounts), as they were."
    ]


def _replay(plan: _Plan, tenant: str | None, chunk_rows: int) -> ReplayResult:
    result = ReplayResult(source=plan.source, shard=plan.shard, days=list(plan.days))
    groups: list[list[Any]] = []
    pending = 0
    for _, tenant_id, kind, received_at, item in _rows_in_position_order([f for _, f in plan.files], tenant):
        last = groups[-1] if groups else None
        # One group per run of rows of one tenant, kind and receipt: as the writes came.
        if last is not None and last[0] == tenant_id and last[1] == kind and last[2] == received_at:
            last[3].append(item)
        else:
            groups.append([tenant_id, kind, received_at, [item]])
        pending += 1
        if pending >= chunk_rows:
            result.add(pending, apply_batch(shard=plan.shard, groups=groups))
            groups, pending = [], 0
    if groups:
        result.add(pending, apply_batch(shard=plan.shard, groups=groups))
    return result


# (position, tenant_id, kind, received_at ISO, [write_id, key, payload, occurred_at ISO])
_Row = tuple[int, str, str, str, list[str]]
_REPLAY_COLUMNS = ["position", "tenant_id", "write_id", "kind", "key", "payload", "occurred_at", "received_at"]


def _rows_in_position_order(files: Sequence[ArchivedFile], tenant: str | None) -> Iterator[_Row]:
    """Every row of ``files`` by position. Files are merged where their position ranges overlap (kinds of
    a day always do; days do where a write's id named the day before its receipt, or where a move brought
    old writes) and read one after another where they do not, so only overlapping files are open at once."""
    runs: list[list[ArchivedFile]] = []
    end = -1
    for archived in sorted(files, key=lambda f: (f.min_position, f.max_position)):
        if runs and archived.min_position <= end:
            runs[-1].append(archived)
        else:
            runs.append([archived])
        end = max(end, archived.max_position)
    for run in runs:
        streams = [_file_rows(archived.path, tenant) for archived in run]
        yield from streams[0] if len(streams) == 1 else heapq.merge(*streams, key=lambda row: row[0])


def _file_rows(path: Path, tenant: str | None) -> Iterator[_Row]:
    for batch in _batches(path, _REPLAY_COLUMNS, tenant):
        columns = [batch.column(name) for name in _REPLAY_COLUMNS]
        positions, tenants, write_ids, kinds, keys, payloads = (column.to_pylist() for column in columns[:6])
        occurred, received = (pc.cast(column, pa.int64()).to_pylist() for column in columns[6:])
        for position, tenant_id, write_id, kind, key, payload, occurred_us, received_us in zip(
            positions, tenants, write_ids, kinds, keys, payloads, occurred, received, strict=True
        ):
            yield position, tenant_id, kind, _iso(received_us), [write_id, key, payload, _iso(occurred_us)]


def _batches(path: Path, columns: list[str], tenant: str | None) -> Iterator[pa.RecordBatch]:
    for batch in pq.ParquetFile(str(path)).iter_batches(batch_size=_READ_BATCH_ROWS, columns=columns):
        yield batch if tenant is None else batch.filter(pc.equal(batch.column("tenant_id"), pa.scalar(tenant)))


_EPOCH_MOMENT = datetime(1970, 1, 1, tzinfo=UTC)


@functools.lru_cache(maxsize=4_096)  # a request's writes share their receipt time
def _iso(micros: int) -> str:
    """The ISO 8601 text of a UTC time in microseconds, exactly (no float on the way)."""
    return (_EPOCH_MOMENT + timedelta(microseconds=micros)).isoformat()


# --- erasure ----------------------------------------------------------------------------------


def erase_tenant_from_archives(tenant_id: str) -> dict[str, int]:
    """Rewrite every archived file that holds ``tenant_id``'s rows without them (atomic replace, the
    manifest updated with the new rows, positions and checksum); a file left empty is removed, and so
    are temporary files left over from crashed writes. Returns the rows erased and the files rewritten
    or removed."""
    tenant = _tenant_id(tenant_id)
    erased = {"archive_rows": 0, "archive_files": 0}
    root = archive_root()
    if not root.is_dir():
        return erased
    for directory in day_directories(root):
        with _day_lock(directory):
            _remove_stale_temporaries(directory)
            manifest = _read_manifest(directory)
            if manifest is None:
                continue
            changed = False
            for entry in list(manifest["files"]):
                path = directory / entry["file"]
                if not path.is_file():
                    continue
                held = _rows_of(path, tenant)
                if not held:
                    continue
                rewritten = _rewrite_without(path, tenant, entry["kind"])
                if rewritten is None:
                    path.unlink()
                    manifest["files"].remove(entry)
                else:
                    os.replace(rewritten.temporary, path)
                    entry.update({k: v for k, v in _entry(rewritten).items() if k != "written_at"})
                erased["archive_rows"] += held
                erased["archive_files"] += 1
                changed = True
            if changed:
                _fsync_directory(directory)
                _write_manifest(directory, manifest)
    return erased


def _rows_of(path: Path, tenant: str) -> int:
    column = pq.read_table(str(path), columns=["tenant_id"]).column("tenant_id")
    return len(column.filter(pc.equal(column, pa.scalar(tenant))))


def _rewrite_without(path: Path, tenant: str, kind: str) -> _Written | None:
    """``path``'s rows but ``tenant``'s, in a complete temporary file; ``None`` when none are left."""
    source = pq.ParquetFile(str(path))
    temporary = _temporary_path(path.parent, path.name)
    writer: pq.ParquetWriter | None = None
    rows = 0
    first: int | None = None
    last = 0
    try:
        for batch in source.iter_batches(batch_size=ROW_GROUP_ROWS):
            kept = batch.filter(pc.not_equal(batch.column("tenant_id"), pa.scalar(tenant)))
            if not kept.num_rows:
                continue
            if writer is None:
                writer = _parquet_writer(temporary, {}, schema=source.schema_arrow)
            writer.write_batch(kept, row_group_size=ROW_GROUP_ROWS)
            low, high = _position_bounds(kept.column("position"))
            first = low if first is None else min(first, low)
            last = max(last, high)
            rows += kept.num_rows
    except BaseException:
        if writer is not None:
            writer.close()
        temporary.unlink(missing_ok=True)
        raise
    if writer is None or first is None:
        return None
    writer.close()
    _fsync_file(temporary)
    digest, size = _digest(temporary)
    return _Written(kind, temporary, rows, first, last, digest, size)


def _position_bounds(positions: pa.Array[Any] | pa.ChunkedArray[Any]) -> tuple[int, int]:
    bounds: Any = pc.min_max(positions).as_py()
    return int(bounds["min"]), int(bounds["max"])


def _remove_stale_temporaries(directory: Path) -> None:
    cutoff = time.time() - STALE_TEMPORARY_SECONDS
    for leftover in directory.glob(f".*{_TEMPORARY_SUFFIX}"):
        with contextlib.suppress(FileNotFoundError):
            if leftover.stat().st_mtime < cutoff:
                leftover.unlink()


# --- files ------------------------------------------------------------------------------------


def _tenant_id(value: str) -> str:
    try:
        return canonical_uuid(value)
    except ValueError as exc:
        raise ArchiveError(f"Not a UUID: {value!r}") from exc


def _checked(name: str, pattern: re.Pattern[str], what: str) -> str:
    if not isinstance(name, str) or not pattern.match(name):
        raise ArchiveError(f"Not a {what} an archive can be named by: {name!r}")
    return name


def _temporary_path(directory: Path, name: str) -> Path:
    # Hidden and not *.parquet: a reader's glob of the archive never takes it for a file of the log.
    return directory / f".{name}.{secrets.token_hex(6)}{_TEMPORARY_SUFFIX}"


@contextlib.contextmanager
def _day_lock(directory: Path) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / _LOCK, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _replace_atomically(path: Path, data: bytes) -> None:
    temporary = _temporary_path(path.parent, path.name)
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    _fsync_directory(path.parent)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _digest(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
