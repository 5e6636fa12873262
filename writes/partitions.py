"""The log's partitions: one per UTC day of the writes' ids, so old data leaves by DETACH and DROP.

``write_log`` is partitioned by ``RANGE (id_day)``. A partitioned table's unique constraint must include
its partition key, so the log's idempotency key is ``(tenant_id, write_id, id_day)``; it stays exactly
``(tenant, id)`` because ``id_day`` is a function of the tenant and the id alone:

- a UUIDv7 id (every server id, and a client's) within a day of its write's receipt: the day of the
  time written in the id. No lookup: the common case costs a few string operations in the worker.
- any other id (a client's UUIDv4 or v5; a UUIDv7 older than that): the day it was first applied,
  recorded in ``write_id_days`` (tenant, id) → day, found there on every repeat. An old UUIDv7 is
  first looked for in its own day's partition, where it went if it came in time before.

A UUIDv7 more than a day in the future is refused at intake (``writes.schemas``) and by the worker, so
an id can only age from the first class into the second, never the other way round. docs/decisions.md
has the measurements behind this choice.

Partitions are created ahead of need by the beat job ``writes.maintain_log`` (and, for a day that is
missing when a write needs it, by the applier itself); retention and archives (``writes.lifecycle``)
take them away.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction

from writes.ids import canonical_uuid

LOG_TABLE = "write_log"
DAY_MS = 86_400_000
EPOCH = date(1970, 1, 1)
#: How far a UUIDv7's own time may lie behind its write's receipt and still name its day. Later
#: repeats (a retry a day after) go through ``write_id_days``.
YOUNG_ID_MS = DAY_MS
#: How far ahead of its receipt a UUIDv7's time may lie: a clock that far off is a client's bug.
ID_AHEAD_MS = DAY_MS

_NAME = re.compile(r"^write_log_(\d{8})$")

# The same rule as ``id_day`` below, in SQL, for the status lookups and the migration of an existing
# log: the day of a UUIDv7's time (NULL for other ids).
UUID7_DAY_SQL = """
CREATE OR REPLACE FUNCTION uuid7_day(id uuid) RETURNS date
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE WHEN substr(id::text, 15, 1) = '7'
        THEN date '1970-01-01' + (('x' || substr(replace(id::text, '-', ''), 1, 12))::bit(48)::bigint / 86400000)::int
    END
$$;
"""


def partition_name(day: date) -> str:
    return f"{LOG_TABLE}_{day:%Y%m%d}"


def day_of_name(name: str) -> date | None:
    match = _NAME.match(name)
    return datetime.strptime(match.group(1), "%Y%m%d").replace(tzinfo=UTC).date() if match else None


def day_number(day: date) -> int:
    return (day - EPOCH).days


def today() -> date:
    return datetime.now(UTC).date()


def uuid7_millis(write_id: str) -> int | None:
    """The Unix milliseconds of a canonical UUIDv7 string, else ``None``."""
    if len(write_id) != 36 or write_id[14] != "7" or write_id[8] != "-":
        return None
    try:
        return int(write_id[:8] + write_id[9:13], 16)
    except ValueError:
        return None


def received_millis(received_at: str) -> int | None:
    try:
        moment = datetime.fromisoformat(received_at)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


_DAY_TEXT: dict[int, str] = {}


def day_text(number: int) -> str:
    """``YYYY-MM-DD`` of a day number (days since 1970-01-01), cached: a COPY line needs one per row."""
    text = _DAY_TEXT.get(number)
    if text is None:
        text = _DAY_TEXT[number] = (EPOCH + timedelta(days=number)).isoformat()
    return text


def young_day(write_id: str, received_ms: int | None) -> int | None:
    """The id's day number when it names its own day (a UUIDv7 at most a day older than its receipt),
    else ``None`` (the id's day comes from ``write_id_days``). An id from more than a day ahead also
    gives ``None``; the worker refuses it."""
    millis = uuid7_millis(write_id)
    if millis is None or received_ms is None:
        return None
    if received_ms - YOUNG_ID_MS <= millis <= received_ms + ID_AHEAD_MS:
        return millis // DAY_MS
    return None


def id_too_far_ahead(write_id: str, received_ms: int | None) -> bool:
    millis = uuid7_millis(write_id)
    return millis is not None and received_ms is not None and millis > received_ms + ID_AHEAD_MS


# --- partitions -------------------------------------------------------------------------------------

_ATTACHED = """
SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'write_log'::regclass
"""


def attached_days(cursor: Any) -> set[date]:
    cursor.execute(_ATTACHED)
    return {day for (name,) in cursor.fetchall() if (day := day_of_name(name)) is not None}


def create_partitions(cursor: Any, days: Iterable[date]) -> list[date]:
    """Create the partitions of ``days`` that do not exist; returns the days created."""
    wanted = set(days) - attached_days(cursor)
    for day in sorted(wanted):
        cursor.execute(
            f"CREATE TABLE IF NOT EXISTS {partition_name(day)} PARTITION OF {LOG_TABLE} "
            f"FOR VALUES FROM ('{day.isoformat()}') TO ('{(day + timedelta(days=1)).isoformat()}')"
        )
        cursor.execute(
            "INSERT INTO log_partitions (day, state) VALUES (%s, 'attached') "
            "ON CONFLICT (day) DO UPDATE SET state = 'attached', retired_at = NULL",
            [day],
        )
    return sorted(wanted)


def days_ahead(start: date | None = None) -> list[date]:
    """The days that should have a partition now: from yesterday (an id up to a day older than its
    receipt) to ``WRITES_LOG_PARTITIONS_AHEAD_DAYS`` ahead."""
    start = start or today()
    ahead = int(settings.WRITES_LOG_PARTITIONS_AHEAD_DAYS)
    return [start + timedelta(days=offset) for offset in range(-1, ahead + 1)]


class MissingPartitions:
    """The applier's view of which days have a partition, per database connection, refreshed from the
    catalog when a write needs a day it has not seen. A missing recent day is created on the spot (the
    beat job was late, or a move brings writes received long ago); a retired one is not: its rows are
    refused."""

    def __init__(self) -> None:
        self.known: dict[str, set[int]] = {}

    def ensure(self, cursor: Any, alias: str, numbers: set[int], *, lock: Callable[[], None]) -> set[int]:
        """Make sure the partitions of ``numbers`` exist where allowed; returns the day numbers that
        have none (retired). ``lock`` is called before anything is created: the shard's append lock,
        so two appliers never race to create one day."""
        known = self.known.setdefault(alias, set())
        missing = numbers - known
        if not missing:
            return set()
        known |= {day_number(day) for day in attached_days(cursor)}
        missing = numbers - known
        if not missing:
            return set()
        lock()
        known |= {day_number(day) for day in attached_days(cursor)}
        missing = numbers - known
        # Any day but a retired one: moves and dead-letter replays bring writes received long ago.
        creatable = {number for number in missing if 0 <= number <= day_number(today()) + 2}
        creatable -= retired_day_numbers(cursor, creatable)
        if creatable:
            create_partitions(cursor, [EPOCH + timedelta(days=number) for number in creatable])
            # Known for good once committed: a rolled back batch takes its new partitions with it.
            transaction.on_commit(lambda: known.update(creatable), using=alias)
        return missing - creatable

    def forget(self, alias: str) -> None:
        self.known.pop(alias, None)


def retired_day_numbers(cursor: Any, numbers: set[int]) -> set[int]:
    if not numbers:
        return set()
    cursor.execute(
        "SELECT day FROM log_partitions WHERE state = 'retired' AND day = ANY(%s)",
        [[EPOCH + timedelta(days=number) for number in numbers]],
    )
    return {day_number(day) for (day,) in cursor.fetchall()}


# --- ids without a day of their own ---------------------------------------------------------------

# (tenant, id, the day it would get if new, the day of its UUIDv7 time or NULL) → the day it has.
_KNOWN = """
SELECT d.tenant_id::text, d.write_id::text, d.id_day
FROM write_id_days d JOIN unnest(%s::uuid[], %s::uuid[]) AS k(tenant_id, write_id)
  ON d.tenant_id = k.tenant_id AND d.write_id = k.write_id
"""

# An old UUIDv7 that came in time before sits in the partition of its own day.
_IN_OWN_DAY = """
SELECT l.tenant_id::text, l.write_id::text
FROM unnest(%s::uuid[], %s::uuid[], %s::date[]) AS k(tenant_id, write_id, id_day)
JOIN write_log l ON l.tenant_id = k.tenant_id AND l.write_id = k.write_id AND l.id_day = k.id_day
"""

# Records each id's day unless it has one, and reads the day each has, in one statement: the rows this
# statement inserted come from its RETURNING, the others from the table as the statement found it.
_REMEMBER = """
WITH k AS (SELECT * FROM unnest(%s::uuid[], %s::uuid[], %s::date[]) AS k(tenant_id, write_id, id_day)),
fresh AS (
    INSERT INTO write_id_days (tenant_id, write_id, id_day) SELECT tenant_id, write_id, id_day FROM k
    ON CONFLICT (tenant_id, write_id) DO NOTHING
    RETURNING tenant_id, write_id, id_day
)
SELECT tenant_id::text, write_id::text, id_day FROM fresh
UNION ALL
SELECT d.tenant_id::text, d.write_id::text, d.id_day FROM write_id_days d
JOIN k ON d.tenant_id = k.tenant_id AND d.write_id = k.write_id
"""

ForeignKey = tuple[str, str]  # (tenant_id, write_id) as spelled in the message


def resolve_foreign_days(cursor: Any, wanted: dict[ForeignKey, tuple[int, int | None]]) -> dict[ForeignKey, int]:
    """The day of each id that does not name its own: ``wanted`` maps (tenant, id) to (the day of its
    receipt, the day of its UUIDv7 time or ``None``). Known ids keep the day recorded for them; an old
    UUIDv7 found in its own day's partition keeps that day; any other gets its receipt's day, recorded
    for its repeats. Ids that are not UUIDs are left out (the insert rejects their rows)."""
    canonical: dict[ForeignKey, ForeignKey] = {}
    for key in wanted:
        tenant, write_id = _uuid_or_none(key[0]), _uuid_or_none(key[1])
        if tenant is not None and write_id is not None:
            canonical[key] = (tenant, write_id)
    if not canonical:
        return {}
    chosen = {canonical[key]: wanted[key][0] for key in canonical}
    # Old UUIDv7s are rare (a retry more than a day late): each costs a probe of its own day.
    own = {canonical[key]: day for key in canonical if (day := wanted[key][1]) is not None}
    if own:
        cursor.execute(
            _IN_OWN_DAY,
            [_array(k[0] for k in own), _array(k[1] for k in own), _array(day_text(d) for d in own.values())],
        )
        found = {(tenant, write_id) for tenant, write_id in cursor.fetchall()}
        chosen.update({key: day for key, day in own.items() if key in found})
    keys = list(chosen)
    cursor.execute(
        _REMEMBER, [_array(k[0] for k in keys), _array(k[1] for k in keys), _array(day_text(chosen[k]) for k in keys)]
    )
    days = {(tenant, write_id): day_number(day) for tenant, write_id, day in cursor.fetchall()}
    late = [key for key in keys if key not in days]
    if late:
        # Recorded meanwhile by a transaction that committed after this statement began: its day is the one.
        cursor.execute(_KNOWN, [_array(k[0] for k in late), _array(k[1] for k in late)])
        days.update({(tenant, write_id): day_number(day) for tenant, write_id, day in cursor.fetchall()})
    return {key: days[canon] for key, canon in canonical.items() if canon in days}


def _array(values: Iterable[str]) -> str:
    """A PostgreSQL array literal of canonical uuids or ISO dates (nothing to quote in either): one text
    parameter, which psycopg sends as it is, where a list is adapted element by element."""
    return "{" + ",".join(values) + "}"


def _uuid_or_none(value: Any) -> str | None:
    try:
        return canonical_uuid(value)
    except ValueError:
        return None


def id_day_sql(tenant: str, write_id: str) -> str:
    """SQL for the day of an applied write's id, from column expressions: what a lookup by (tenant, id)
    joins ``write_log.id_day`` to, so that PostgreSQL reads one partition instead of all of them."""
    known = f"SELECT d.id_day FROM write_id_days d WHERE d.tenant_id = {tenant} AND d.write_id = {write_id}"  # noqa: S608
    return f"coalesce(({known}), uuid7_day({write_id}))"
