"""Bulk apply of one batch to one shard, with poison isolation.

One transaction per batch: COPY the rows into a temporary staging table, take the shard's append lock,
``INSERT … SELECT … ORDER BY … ON CONFLICT DO NOTHING`` into the log, commit. A batch that fails for a
data reason is bisected until each bad row stands alone; those are recorded in ``rejected_writes``.
A kind that needs more than the append (the ledger's guarded balances) registers a ``KindHook``.
Writes of a logical shard that has left this shard (``moved_logical_shards``, read under the append
lock) are not applied here but forwarded, before COMMIT, to the queue where they now belong.
"""

from __future__ import annotations

import logging
import uuid
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

import psycopg
from django.conf import settings
from django.db import DataError, IntegrityError, connections, transaction
from kombu import Queue

from writes.errors import ErasedMeanwhile, ForwardFailed
from writes.fates import claim_messages
from writes.lifecycle import horizon_number
from writes.models import MovedLogicalShard
from writes.notifications import notify_writes_applied
from writes.partitions import (
    DAY_MS,
    ForeignKey,
    MissingPartitions,
    day_number,
    day_text,
    id_too_far_ahead,
    received_millis,
    resolve_foreign_days,
    today,
    uuid7_millis,
    young_day,
)
from writes.routing import logical_shard_for
from writes.tombstones import erased_among

logger = logging.getLogger(__name__)

# Every appender on a shard takes this transaction-level advisory lock right before its rows get
# their positions and keeps it until COMMIT, so commit order equals position order: a reader that has
# seen position P never later finds a committed row below P.
APPEND_LOCK_KEY = 0x5752_4954_455F_4C4F  # "WRITE_LO"

# [seq, tenant_id, write_id, kind, key, payload, occurred_at, received_at]
StagedRow = tuple[int, str, str, str, str, str, str, str]

# Created once per database connection (the table lives as long as the session); emptied at every
# COMMIT. Columns in the order a COPY line is written: the row's own fields, then its group's.
_STAGING_DDL = """
CREATE TEMPORARY TABLE IF NOT EXISTS staging_writes (
    seq bigint GENERATED ALWAYS AS IDENTITY,
    write_id text NOT NULL,
    key text NOT NULL,
    payload text NOT NULL,
    occurred_at text NOT NULL,
    tenant_id text NOT NULL,
    kind text NOT NULL,
    received_at text NOT NULL,
    id_day text NOT NULL
) ON COMMIT DELETE ROWS
"""

_COPY = "COPY staging_writes (write_id, key, payload, occurred_at, tenant_id, kind, received_at, id_day) FROM STDIN"

_INSERT = """
INSERT INTO write_log (tenant_id, write_id, kind, key, payload, occurred_at, received_at, id_day)
SELECT tenant_id::uuid, write_id::uuid, kind, key, payload::jsonb, occurred_at::timestamptz, received_at::timestamptz,
       id_day::date
FROM staging_writes
ORDER BY seq
ON CONFLICT (tenant_id, write_id, id_day) DO NOTHING
"""

# Staged rows that the insert left out because their id is in the log with other content (another kind,
# key or payload): ids are idempotency keys, so the repeat is reported, never dropped silently. Run only
# when the insert took fewer rows than were staged (a redelivery, an id reused): a redelivery is
# identical and matches nothing here.
_CONFLICTS = """
SELECT s.seq, s.tenant_id, s.write_id, s.kind, s.key, s.payload, s.occurred_at, s.received_at, l.kind
FROM staging_writes s
JOIN write_log l ON l.tenant_id = s.tenant_id::uuid AND l.write_id = s.write_id::uuid AND l.id_day = s.id_day::date
WHERE l.kind <> s.kind OR l.key <> s.key OR l.payload <> s.payload::jsonb
ORDER BY s.seq
"""

#: The rejection code of a write whose id was used before by a write with other content (TigerBeetle's
#: ``exists_with_different_fields``). The first write keeps the id; the status shows the conflict.
EXISTS_WITH_DIFFERENT_FIELDS = "exists_with_different_fields"


def conflict_reason(kind: str) -> str:
    return (
        f"The id was used before by a {kind} write with other content; ids are idempotency keys, "
        "so this write was not applied. Send it again with a new id."
    )


# Names the open apply transaction in pg_stat_activity until COMMIT (``SET LOCAL``), e.g.
# ``apply shard_0 messages=12 writes=4800 event,transfer``: operators (and the fault tests) see how many
# messages, writes and which kinds each applying transaction holds.
_TAG = "SELECT set_config('application_name', %s, true)"

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


# (row, code, reason) of a write that will be recorded in rejected_writes instead of the log.
Rejection = tuple[StagedRow, str, str]


class KindDecision(Protocol):
    #: (tenant_id, write_id), spelled as in the message, of the rows to leave out of the insert: the
    #: rejected ones and redeliveries.
    drop: set[tuple[str, str]]
    rejected: list[Rejection]


class KindHook(Protocol):
    """Kind-specific work in a batch's transaction, around the generic insert: ``before_insert`` sees
    the kind's rows before the append lock (take row locks here, in a fixed order) and decides which to
    leave out; ``after_insert`` completes the work once the rows have their positions."""

    def before_insert(self, cursor: Any, rows: list[StagedRow]) -> KindDecision: ...

    def after_insert(self, cursor: Any, decision: Any) -> None: ...


# kind → hook; filled by ``WritesConfig.ready``. Kinds without a hook (events) pay one set lookup per
# group, nothing per row.
KIND_HOOKS: dict[str, KindHook] = {}

_FENCES = "SELECT logical_shard, moved_to, state FROM moved_logical_shards"


@dataclass(frozen=True, slots=True)
class ApplyResult:
    received: int
    applied: int
    duplicates: int
    rejected: int
    diverted: int = 0
    #: Writes of messages this transaction did not claim: abandoned by the API, or applied before.
    skipped: int = 0
    #: Writes of tenants erased on this shard (``writes.erasure``): dropped, never applied or recorded.
    erased: int = 0


class _Diversion:
    """Rows of logical shards that left this shard: taken out of staging before the INSERT, kept here."""

    def __init__(self) -> None:
        self.rows: dict[int, StagedRow] = {}

    @staticmethod
    def leaving(cursor: Any, batch: _Batch) -> set[str]:
        """Under the append lock: the batch's tenants whose logical shard is fenced here."""
        cursor.execute(_FENCES)
        fenced = {logical for logical, _, _ in cursor.fetchall()}
        if not fenced:
            return set()
        return {tenant for tenant in batch.tenants() if _logical_shard(tenant) in fenced}

    def take_out(self, cursor: Any, batch: _Batch) -> None:
        """Under the append lock: remove from staging every row whose logical shard is fenced here."""
        leaving = self.leaving(cursor, batch)
        if not leaving:
            return
        cursor.execute("DELETE FROM staging_writes WHERE tenant_id = ANY(%s)", [list(leaving)])
        self.rows.update((row[0], row) for row in batch.rows() if row[1] in leaving)

    def take_out_rejected(self, cursor: Any, rejected: list[Rejection]) -> list[Rejection]:
        """Under the append lock: of the rejections a kind hook decided before it, return those to record
        here; the rows of a fenced logical shard are forwarded instead, for their new shard to decide
        (against its accounts and balances, where their status is read)."""
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [APPEND_LOCK_KEY])  # re-entrant: held if inserted
        cursor.execute(_FENCES)
        fenced = {logical for logical, _, _ in cursor.fetchall()}
        if not fenced:
            return rejected
        kept: list[Rejection] = []
        for rejection in rejected:
            row = rejection[0]
            if _logical_shard(row[1]) in fenced:
                self.rows[row[0]] = row
            else:
                kept.append(rejection)
        return kept


def _logical_shard(tenant_id: str) -> int | None:
    try:
        return logical_shard_for(uuid.UUID(tenant_id))
    except (ValueError, TypeError, AttributeError):
        return None  # not a tenant id at all: left in the batch, where the cast rejects it


def staged_rows(groups: Sequence[Sequence[Any]]) -> list[StagedRow]:
    """Flatten the message's groups into staging rows, numbered in arrival order."""
    rows: list[StagedRow] = []
    seq = 0
    for tenant_id, kind, received_at, items in groups:
        for write_id, key, payload, occurred_at in items:
            rows.append((seq, tenant_id, write_id, kind, key, payload, occurred_at, received_at))
            seq += 1
    return rows


# --- COPY text ------------------------------------------------------------------------------
# Rows go to PostgreSQL as COPY text written straight from the message's lists: no tuple per row and
# no per-field adaptation. A line is valid as it stands when no field holds a tab, newline, carriage
# return or backslash; one count over a group's text checks that, and only a group that fails it (or
# holds a non-string) is written again field by field with escapes.

_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_field(value: Any) -> str:
    if value is None:
        return "\\N"
    return (value if isinstance(value, str) else str(value)).translate(_COPY_ESCAPES)


def _plain(text: str, lines: int) -> bool:
    return text.count("\t") == 7 * lines and text.count("\n") == lines and "\\" not in text and "\r" not in text


def group_copy_text(group: Sequence[Any], days: Sequence[int]) -> str:
    """One message group as COPY text lines (write_id, key, payload, occurred_at, tenant, kind, received,
    id_day), ``days`` holding each row's day number."""
    tenant_id, kind, received_at, items = group
    if not items:
        return ""
    head = f"\t{_copy_field(tenant_id)}\t{_copy_field(kind)}\t{_copy_field(received_at)}\t"
    if min(days) == max(days):  # the usual group: one request's ids, made in one millisecond
        tail = f"{head}{day_text(days[0])}\n"
        try:
            text = tail.join(map("\t".join, items)) + tail
        except TypeError:
            text = ""
        if text and _plain(text, len(items)):
            return text
    lines = []
    for (write_id, key, payload, occurred_at), day in zip(items, days, strict=True):
        fields = (write_id, key, payload, occurred_at)
        lines.append("\t".join(map(_copy_field, fields)) + head + day_text(day) + "\n")
    return "".join(lines)


def rows_copy_text(rows: Sequence[StagedRow], days: Sequence[int]) -> str:
    """Staged rows as COPY text lines, in the staging table's column order."""
    lines = []
    for (_, tenant_id, write_id, kind, key, payload, occurred_at, received_at), day in zip(rows, days, strict=True):
        fields = (write_id, key, payload, occurred_at, tenant_id, kind, received_at, day_text(day))
        try:
            line = "\t".join(fields) + "\n"
        except TypeError:
            line = ""
        if not line or not _plain(line, 1):
            line = "\t".join(map(_copy_field, fields)) + "\n"
        lines.append(line)
    return "".join(lines)


#: Rejection codes of rows that get no day in the log (``_Batch.resolve_days``).
ID_FROM_THE_FUTURE = "id_from_the_future"
RETENTION_EXPIRED = "retention_expired"
DAY_RETIRED = "day_retired"

# The applier's view of the partitions that exist, per database (writes.partitions).
_partitions = MissingPartitions()


def _retention_horizons() -> dict[str, int]:
    """kind → the first day number still kept (``WRITES_RETENTION_DAYS``)."""
    return {kind: horizon for kind in settings.WRITES_RETENTION_DAYS if (horizon := horizon_number(kind)) is not None}


class _Batch:
    """The writes of one apply attempt: the message groups as they came (the fast path), or staged
    rows once something needed them one by one (a hook, a fence, a bisection, a refusal). ``days``
    holds every row's ``id_day`` (a day number), in order, once ``resolve_days`` gave them."""

    def __init__(
        self,
        groups: Sequence[Sequence[Any]] | None,
        rows: list[StagedRow] | None = None,
        days: list[int] | None = None,
    ) -> None:
        self.groups = groups
        self._rows = rows
        self.days = days
        self.count = len(rows) if rows is not None else sum(len(group[3]) for group in groups or ())

    def rows(self) -> list[StagedRow]:
        if self._rows is None:
            self._rows = staged_rows(self.groups or ())
        return self._rows

    def part(self, start: int, stop: int) -> _Batch:
        days = self.days[start:stop] if self.days is not None else None
        return _Batch(None, self.rows()[start:stop], days)

    def tenants(self) -> set[str]:
        if self._rows is None:
            return {group[0] for group in self.groups or ()}
        return {row[1] for row in self._rows}

    def _entries(self) -> Iterator[tuple[str, str, Any, Any]]:
        """(tenant, kind, received_at, write_id) of every row, in order."""
        if self._rows is None:
            for tenant_id, kind, received_at, items in self.groups or ():
                for item in items:
                    yield tenant_id, kind, received_at, item[0]
        else:
            for row in self._rows:
                yield row[1], row[3], row[7], row[2]

    def resolve_days(self, cursor: Any) -> list[Rejection]:
        """Give every row its ``id_day`` (``writes.partitions``), make sure its partition exists, and
        take out the rows that cannot have one; returns those, as rejections."""
        today_number = day_number(today())
        days: list[int | None] = []
        refused: dict[int, tuple[str, str]] = {}
        foreign: dict[ForeignKey, tuple[int, int | None]] = {}
        received_ms: int | None = None
        last_received: Any = None
        # One request's server ids share their millisecond, so a row whose id starts like the row
        # before it (time and version: the first 15 characters) has that row's day: one slice and one
        # comparison per row in the common case.
        last_prefix, last_day = "", 0
        for index, (tenant_id, _, received_at, write_id) in enumerate(self._entries()):
            if received_at is not last_received:
                last_received, last_prefix = received_at, ""
                received_ms = received_millis(received_at) if isinstance(received_at, str) else None
            if isinstance(write_id, str) and write_id[:15] == last_prefix:
                days.append(last_day)
                continue
            day = young_day(write_id, received_ms) if isinstance(write_id, str) else None
            if day is not None:
                last_prefix, last_day = write_id[:15], day
            elif isinstance(write_id, str) and id_too_far_ahead(write_id, received_ms):
                refused[index] = (ID_FROM_THE_FUTURE, _FUTURE_REASON)
            else:
                millis = uuid7_millis(write_id) if isinstance(write_id, str) else None
                receipt = received_ms // DAY_MS if received_ms is not None else today_number
                foreign[(str(tenant_id), str(write_id))] = (receipt, millis // DAY_MS if millis else None)
            days.append(day)
        if foreign:
            known = resolve_foreign_days(cursor, foreign)
            for index, (tenant_id, _, _, write_id) in enumerate(self._entries()):
                if days[index] is None and index not in refused:
                    # An id that is not a UUID gets any day: the insert rejects its row on its own.
                    days[index] = known.get((str(tenant_id), str(write_id)), today_number)
        horizons = _retention_horizons()
        if horizons:
            for index, (_, kind, _, _) in enumerate(self._entries()):
                horizon = horizons.get(kind)
                day = days[index]
                if horizon is not None and day is not None and day < horizon and index not in refused:
                    reason = _expired_reason(kind, settings.WRITES_RETENTION_DAYS[kind], day)
                    refused[index] = (RETENTION_EXPIRED, reason)
        if refused:
            needed = {day for index, day in enumerate(days) if day is not None and index not in refused}
        else:
            needed = {day for day in set(days) if day is not None}
        retired = _partitions.ensure(cursor, cursor.db.alias, needed, lock=lambda: _append_lock(cursor))
        if retired:
            for index, day in enumerate(days):
                if day in retired and index not in refused:
                    refused[index] = (DAY_RETIRED, _retired_reason(day))
        if not refused:
            self.days = cast("list[int]", days)  # only a refused row is left without a day
            return []
        rows = self.rows()
        kept = [index for index in range(len(rows)) if index not in refused]
        self._rows = [rows[index] for index in kept]
        self.groups = None
        self.days = [day if (day := days[index]) is not None else today_number for index in kept]
        self.count = len(self._rows)
        return [(rows[index], code, reason) for index, (code, reason) in sorted(refused.items())]

    def copy_data(self) -> bytes:
        if self.days is None:
            raise RuntimeError("resolve_days() gives the rows their days before they are copied")
        if self._rows is None:
            parts = []
            offset = 0
            for group in self.groups or ():
                size = len(group[3])
                parts.append(group_copy_text(group, self.days[offset : offset + size]))
                offset += size
            return "".join(parts).encode()
        return rows_copy_text(self._rows, self.days).encode()


_FUTURE_REASON = (
    "The id is a UUIDv7 whose time is more than a day after the write was received: a clock that far "
    "off would put the write in a day of the log that does not exist yet. Send it with a current id."
)


def _expired_reason(kind: str, keep_days: int, day: int) -> str:
    return (
        f"The id's day ({day_text(day)}) is older than the {keep_days} days {kind} writes are kept "
        "(WRITES_RETENTION_DAYS): the write would be retired at once, and whether it was applied before "
        "can no longer be told. It was not applied."
    )


def _retired_reason(day: int) -> str:
    return (
        f"The log's day {day_text(day)} has been retired (archived and removed by retention); "
        "a write that belongs to it cannot be applied any more."
    )


# Raw connections (psycopg) whose session already has the staging table.
_staging_ready: weakref.WeakSet[Any] = weakref.WeakSet()


def _prepare_staging(cursor: Any, raw_connection: Any) -> bool:
    """Create the staging table unless this session has it; True when this transaction created it."""
    if raw_connection in _staging_ready:
        return False
    cursor.execute(_STAGING_DDL)
    return True


@dataclass(frozen=True, slots=True)
class PublishedMessage:
    """One broker message's writes: its id (the task id its publisher gave it) and its groups. A message
    without a usable id (``None``) is applied unclaimed."""

    message_id: str | None
    groups: Sequence[Sequence[Any]]


def message_id(value: Any) -> str | None:
    """A message's id as ``publish_fates`` keys it, or ``None`` when it is not a UUID."""
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        return None


def apply_messages(*, shard: str, messages: Sequence[PublishedMessage]) -> ApplyResult:
    """Apply broker messages to ``shard`` in one transaction, each only if this transaction claims it
    (``writes.fates``): a message the API abandoned, or one already applied, is left out whole."""
    return _apply(shard=shard, groups=None, messages=messages, divert=True)


def apply_batch(*, shard: str, groups: Sequence[Sequence[Any]], divert: bool = True) -> ApplyResult:
    """Apply message groups to ``shard`` in one transaction, unclaimed (moving data in, and tests).
    ``divert=False`` (moving data in) ignores fences."""
    return _apply(shard=shard, groups=groups, messages=(), divert=divert)


def _apply(
    *,
    shard: str,
    groups: Sequence[Sequence[Any]] | None,
    messages: Sequence[PublishedMessage],
    divert: bool,
) -> ApplyResult:
    connection = connections[shard]
    rejected: list[Rejection] = []
    diversion = _Diversion() if divert else None
    # Only a COMMIT of our own makes the staging table permanent for the session; inside a caller's
    # transaction, the caller may still roll it back.
    outermost = not connection.in_atomic_block
    created = False
    erased = 0
    with transaction.atomic(using=shard), connection.cursor() as cursor:
        created = _prepare_staging(cursor, connection.connection)
        if groups is None:
            claimed = claim_messages(cursor, [m.message_id for m in messages if m.message_id is not None])
            groups = [
                group
                for message in messages
                if message.message_id is None or message.message_id in claimed
                for group in message.groups
            ]
        skipped = (
            sum(len(group[3]) for message in messages for group in message.groups)
            - sum(len(group[3]) for group in groups)
            if messages
            else 0
        )
        gone = erased_among(cursor, {str(group[0]) for group in groups})
        if gone:
            erased = sum(len(group[3]) for group in groups if str(group[0]) in gone)
            groups = [group for group in groups if str(group[0]) not in gone]
        batch = _Batch(groups)
        received = batch.count + erased
        hooked = {str(group[1]) for group in groups}.intersection(KIND_HOOKS)
        kinds = ",".join(sorted({str(group[1]) for group in groups}))
        tag = f"apply {shard} messages={len(messages) or 1} writes={received} {kinds}"
        cursor.execute(_TAG, [tag[:63]])
        decisions = []
        hook_rejected: list[Rejection] = []
        if hooked:
            rows = batch.rows()
            for kind in sorted(hooked):
                hook = KIND_HOOKS[kind]
                decision = hook.before_insert(cursor, [row for row in rows if row[3] == kind])
                decisions.append((hook, decision))
                hook_rejected.extend(decision.rejected)
                if decision.drop:
                    rows = [row for row in rows if row[3] != kind or (row[1], row[2]) not in decision.drop]
            batch = _Batch(None, rows)
        if batch.count:
            hook_rejected.extend(batch.resolve_days(cursor))
        applied = None
        if batch.count:
            applied = _copy_into_log(cursor, batch, diversion)
        if applied is None and batch.count:
            # The partitions may have changed under this process (retention retired a day): look again.
            _partitions.forget(cursor.db.alias)
            hook_rejected.extend(batch.resolve_days(cursor))
        if applied is None:
            applied = _apply_isolating(cursor, batch, rejected, diversion, first=True) if batch.count else 0
        if hook_rejected and diversion is not None:
            # Hooks decide before the append lock; whether a row's logical shard is still here is only
            # known under it (a rejection recorded here for a moving shard would never be read).
            hook_rejected = diversion.take_out_rejected(cursor, hook_rejected)
        rejected[:0] = hook_rejected
        for hook, decision in decisions:
            hook.after_insert(cursor, decision)
        if rejected:
            cursor.executemany(_REJECT, [_rejection_record(row, code, reason) for row, code, reason in rejected])
        if diversion is not None and diversion.rows:
            _forward(cursor, shard, [diversion.rows[seq] for seq in sorted(diversion.rows)])
        if applied or rejected:
            notify_writes_applied(cursor)
    if created and outermost:
        _staging_ready.add(connection.connection)
    if rejected:
        logger.warning(
            "shard %s: rejected %d of %d writes",
            shard,
            len(rejected),
            received,
            extra={"shard": shard, "batch_size": received, "write_ids": [row[2] for row, _, _ in rejected][:20]},
        )
    diverted = len(diversion.rows) if diversion is not None else 0
    return ApplyResult(
        received=received + skipped,
        applied=applied,
        duplicates=received - applied - len(rejected) - diverted - erased,
        rejected=len(rejected),
        diverted=diverted,
        skipped=skipped,
        erased=erased,
    )


def _apply_isolating(
    cursor: Any,
    batch: _Batch,
    rejected: list[Rejection],
    diversion: _Diversion | None,
    *,
    first: bool,
) -> int:
    """Apply ``batch`` in a savepoint; on a data error, bisect. Returns the number of rows inserted."""
    try:
        with transaction.atomic(using=cursor.db.alias):
            if not first:
                cursor.execute("DELETE FROM staging_writes")
            return _copy_and_insert(cursor, batch, diversion, rejected)
    except DATA_ERRORS as exc:
        rows = batch.rows()
        if len(rows) == 1:
            rejected.append((rows[0], "invalid_write", _reason(exc)))
            return 0
        middle = len(rows) // 2
        return _apply_isolating(cursor, batch.part(0, middle), rejected, diversion, first=False) + (
            _apply_isolating(cursor, batch.part(middle, len(rows)), rejected, diversion, first=False)
        )


_COPY_INTO_LOG = "COPY write_log (write_id, key, payload, occurred_at, tenant_id, kind, received_at, id_day) FROM STDIN"


def _copy_into_log(cursor: Any, batch: _Batch, diversion: _Diversion | None) -> int | None:
    """The common case, at the cost of one COPY: the rows straight into the log, under the append lock
    (positions are given in COPY order, and commit order stays position order).

    ``None`` when it does not apply and nothing was written: a row of a fenced logical shard, a repeated
    id (a redelivery, a client's retry) or a row PostgreSQL refuses. The caller then takes the staging
    path, which skips repeats, forwards fenced rows and isolates bad ones. A failed attempt only leaves
    a gap in the positions, which readers step over.
    """
    try:
        with transaction.atomic(using=cursor.db.alias):
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [APPEND_LOCK_KEY])
            _refuse_erased(cursor, batch)
            if diversion is not None and diversion.leaving(cursor, batch):
                return None
            with cursor.cursor.copy(_COPY_INTO_LOG) as copy:
                copy.write(batch.copy_data())
            return batch.count
    except DATA_ERRORS:
        return None


def _copy_and_insert(cursor: Any, batch: _Batch, diversion: _Diversion | None, rejected: list[Rejection]) -> int:
    """Stage and insert ``batch``; returns the rows inserted. Rows whose id the log holds with other
    content are added to ``rejected``."""
    with cursor.cursor.copy(_COPY) as copy:
        copy.write(batch.copy_data())
    cursor.execute("SELECT pg_advisory_xact_lock(%s)", [APPEND_LOCK_KEY])
    _refuse_erased(cursor, batch)
    if diversion is not None:
        diversion.take_out(cursor, batch)
    cursor.execute(_INSERT)
    inserted = int(cursor.rowcount)
    if inserted < batch.count:
        cursor.execute(_CONFLICTS)
        for *row, stored_kind in cursor.fetchall():
            rejected.append((tuple(row), EXISTS_WITH_DIFFERENT_FIELDS, conflict_reason(stored_kind)))
    return inserted


def _append_lock(cursor: Any) -> None:
    cursor.execute("SELECT pg_advisory_xact_lock(%s)", [APPEND_LOCK_KEY])


def _refuse_erased(cursor: Any, batch: _Batch) -> None:
    """Under the append lock: a tenant erased since this batch began (its tombstone is written under
    the same lock) fails the batch, to be tried again without that tenant's writes."""
    gone = erased_among(cursor, batch.tenants())
    if gone:
        raise ErasedMeanwhile(f"tenant(s) {', '.join(sorted(gone))} erased while their writes were being applied")


def _forward(cursor: Any, shard: str, rows: list[StagedRow]) -> None:
    """Publish diverted rows where their logical shard now lives, still under the append lock.

    Publishing before COMMIT, with the lock held, is what lets ``move_logical_shard`` change a fence and
    know that no appender is still about to publish under the old state. If COMMIT then fails, the
    message is redelivered and forwarded again; the destination ignores the repeats by id.
    """
    from writes.publisher import publish_apply_message
    from writes.queues import hold_queue, shard_queue

    cursor.execute("SELECT pg_advisory_xact_lock(%s)", [APPEND_LOCK_KEY])  # held already unless rolled back
    cursor.execute(_FENCES)
    fences = {logical: (moved_to, state) for logical, moved_to, state in cursor.fetchall()}
    targets: dict[str, tuple[Queue, str, list[StagedRow]]] = {}
    for row in rows:
        logical = _logical_shard(row[1])
        # No fence any more (the logical shard came back here meanwhile): send it to this shard's own queue.
        moved_to, state = fences.get(logical, (shard, MovedLogicalShard.MOVED))
        queue = (
            hold_queue(logical) if state == MovedLogicalShard.HOLDING and logical is not None else shard_queue(moved_to)
        )
        targets.setdefault(queue.name, (queue, moved_to, []))[2].append(row)
    for target, moved_to, target_rows in targets.values():
        try:
            publish_apply_message(target, moved_to, regroup(target_rows))
        except Exception as exc:
            raise ForwardFailed(f"forwarding {len(target_rows)} writes to {target.name} failed: {exc}") from exc
        logger.info(
            "shard %s: forwarded %d writes of a moved logical shard to %s",
            shard,
            len(target_rows),
            target.name,
            extra={"shard": shard, "batch_size": len(target_rows), "write_ids": [r[2] for r in target_rows][:20]},
        )


def regroup(rows: Sequence[StagedRow]) -> list[list[Any]]:
    """Staged rows back into message groups: runs of one tenant, kind and receipt time."""
    groups: list[list[Any]] = []
    for _, tenant_id, write_id, kind, key, payload, occurred_at, received_at in rows:
        if not groups or groups[-1][:3] != [tenant_id, kind, received_at]:
            groups.append([tenant_id, kind, received_at, []])
        groups[-1][3].append([write_id, key, payload, occurred_at])
    return groups


def _as_uuid(value: str, what: str, problems: list[str]) -> str:
    try:
        return str(uuid.UUID(value))
    except (ValueError, TypeError, AttributeError):
        # Still recorded, under a stable stand-in id, so the rejection is visible rather than failing the batch.
        stand_in = str(uuid.uuid5(uuid.NAMESPACE_URL, f"invalid:{value!r}"))
        problems.append(f"{what} {str(value)[:100]!r} is not a UUID (recorded as {stand_in})")
        return stand_in


def _rejection_record(row: StagedRow, code: str, reason: str) -> list[str]:
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
        code,
        text,
    ]


def _reason(exc: BaseException) -> str:
    message = str(exc).strip().splitlines()
    return message[0][:500] if message else exc.__class__.__name__
