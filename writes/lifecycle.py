"""The log's lifecycle: partitions made ahead of need, retention applied, old days archived and dropped.

``maintain_log(shard)`` is what the beat job ``writes.maintain_log`` and ``python manage.py
maintain_log`` run. For every day partition older than a kind's retention (``WRITES_RETENTION_DAYS``):

1. the expired kinds' rows are archived (``writes.archive``, unless ``WRITES_ARCHIVE`` is off);
2. the partition leaves: when nothing else is left in it, ``DETACH PARTITION`` then ``DROP TABLE``;
   when kinds with a longer retention remain, their rows are first copied into a replacement table,
   which takes the partition's place in the same transaction as the DETACH.

No row is ever deleted: data leaves with its table. The swap holds the log's ACCESS EXCLUSIVE lock only
for the DETACH/ATTACH (milliseconds; ``lock_timeout`` bounds the wait), and checks that the partition's
highest position is still the one archived: a write that reached that day meanwhile (a repeat, a
message that sat in a queue) makes the pass give up on that day and try again at the next run.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from django.conf import settings
from django.db import OperationalError, connections, transaction

from writes.partitions import (
    LOG_TABLE,
    attached_days,
    create_partitions,
    day_number,
    days_ahead,
    partition_name,
    today,
)

logger = logging.getLogger(__name__)

# How long the swap may wait for the log's lock before it gives up for this run.
SWAP_LOCK_TIMEOUT = "2s"
# One pass per shard at a time (the read models' maintenance lock, under this name).
MAINTENANCE_LOCK_NAME = "write_log lifecycle"


@dataclass
class DayOutcome:
    day: date
    #: The kinds retired from this day by this pass.
    kinds: list[str]
    #: "dropped" (the partition left whole), "rewritten" (other kinds stayed), "busy" (the day changed
    #: or the lock was not free: tried again at the next run).
    action: str
    archived_rows: int = 0
    kept_rows: int = 0
    #: How long the log's lock was held for the partition to leave (DETACH, and ATTACH of a rewrite).
    swap_seconds: float = 0.0
    archive: str | None = None


@dataclass
class MaintenanceReport:
    shard: str
    created: list[date] = field(default_factory=list)
    days: list[DayOutcome] = field(default_factory=list)
    #: Another pass held the shard's log maintenance lock: this one did nothing.
    busy: bool = False

    def describe(self) -> str:
        if self.busy:
            return f"{self.shard}: another maintenance pass is running; nothing done"
        lines = [f"{self.shard}: {len(self.created)} partition(s) created ahead"]
        for outcome in self.days:
            lines.append(
                f"  {outcome.day}: {', '.join(outcome.kinds)} {outcome.action}"
                f" (archived {outcome.archived_rows} rows, kept {outcome.kept_rows},"
                f" lock held {outcome.swap_seconds * 1000:.1f} ms)"
            )
        return "\n".join(lines)


def expired_kinds(day: date, current: date, retention: dict[str, int]) -> set[str]:
    """The kinds whose retention ``day`` has passed: kept ``N`` days means days before today - N go."""
    return {kind for kind, keep in retention.items() if day < current - timedelta(days=keep)}


def maintain_log(shard: str, *, current: date | None = None, dry_run: bool = False) -> MaintenanceReport:
    """One pass on ``shard``; a pass already running there (beat's and the command's) makes this one
    return at once, with ``busy`` set."""
    from readmodels.repair import maintenance_lock

    with maintenance_lock(shard, MAINTENANCE_LOCK_NAME) as acquired:
        if not acquired:
            logger.info("log maintenance of %s: another pass is running", shard, extra={"shard": shard})
            return MaintenanceReport(shard, busy=True)
        return _maintain(shard, current or today(), dry_run)


def _maintain(shard: str, current: date, dry_run: bool) -> MaintenanceReport:
    from writes.apply import APPEND_LOCK_KEY

    report = MaintenanceReport(shard)
    connection = connections[shard]
    with transaction.atomic(using=shard), connection.cursor() as cursor:
        if not dry_run:
            # Under the append lock, as the applier creates a missing day: never two creators of one day.
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [APPEND_LOCK_KEY])
            report.created = create_partitions(cursor, days_ahead(current))
        days = sorted(attached_days(cursor))
        cursor.execute("SELECT day, retired_kinds FROM log_partitions")
        retired = {day: set(kinds) for day, kinds in cursor.fetchall()}
        if not dry_run:
            _drop_leftovers(cursor)
    retention = dict(settings.WRITES_RETENTION_DAYS)
    for day in days:
        expired = expired_kinds(day, current, retention) - retired.get(day, set())
        if not expired:
            continue
        if dry_run:
            report.days.append(DayOutcome(day, sorted(expired), "would retire"))
            continue
        report.days.append(retire(shard, day, sorted(expired), already=retired.get(day, set())))
    if report.created or report.days:
        logger.info("log maintenance: %s", report.describe(), extra={"shard": shard})
    return report


def retire(shard: str, day: date, kinds: list[str], *, already: set[str] | None = None) -> DayOutcome:
    """Archive ``kinds`` of ``day`` and take them out of the log (see the module's docstring)."""
    name = partition_name(day)
    outcome = DayOutcome(day, kinds, "busy")
    gone = sorted(set(kinds) | (already or set()))
    with connections[shard].cursor() as cursor:
        cursor.execute(f"SELECT coalesce(max(position), 0) FROM {name}")  # noqa: S608 (our own name)
        (highest,) = cursor.fetchone()
        if settings.WRITES_ARCHIVE:
            from writes.archive import archive_day

            archived = archive_day(shard=shard, day=day, kinds=kinds)
            outcome.archived_rows = sum(archived.rows.values())
            outcome.archive = str(archived.directory)
            if archived.max_position and archived.max_position > highest:
                highest = archived.max_position
        else:
            cursor.execute(f"SELECT count(*) FROM {name} WHERE kind = ANY(%s)", [kinds])  # noqa: S608
            outcome.archived_rows = int(cursor.fetchone()[0])
        cursor.execute(f"SELECT EXISTS (SELECT 1 FROM {name} WHERE kind <> ALL(%s))", [gone])  # noqa: S608
        (others,) = cursor.fetchone()
    if others:
        return _rewrite(shard, day, kinds, gone, highest, outcome)
    return _drop(shard, day, gone, highest, outcome)


def _swap_prologue(cursor: Any) -> None:
    cursor.execute(f"SET LOCAL lock_timeout = '{SWAP_LOCK_TIMEOUT}'")


def _unchanged(cursor: Any, table: str, highest: int) -> bool:
    cursor.execute(f"SELECT coalesce(max(position), 0) FROM {table}")  # noqa: S608 (our own name)
    return int(cursor.fetchone()[0]) == highest


def _drop(shard: str, day: date, gone: list[str], highest: int, outcome: DayOutcome) -> DayOutcome:
    name = partition_name(day)
    try:
        started = time.perf_counter()
        with transaction.atomic(using=shard), connections[shard].cursor() as cursor:
            _swap_prologue(cursor)
            cursor.execute(f"ALTER TABLE {LOG_TABLE} DETACH PARTITION {name}")
            if not _unchanged(cursor, name, highest):
                raise _Changed
            cursor.execute(
                "UPDATE log_partitions SET state = 'retired', retired_kinds = %s, retired_at = now() WHERE day = %s",
                [gone, day],
            )
        outcome.swap_seconds = time.perf_counter() - started  # the log's lock is held until COMMIT
    except (_Changed, OperationalError) as exc:
        logger.warning("log maintenance: %s of %s left for the next run (%s)", day, shard, _why(exc))
        return outcome
    with connections[shard].cursor() as cursor:
        cursor.execute(f"DROP TABLE {name}")
        # Outside the log's lock: write_id_days has no index on the day, so this reads the whole table.
        cursor.execute("DELETE FROM write_id_days WHERE id_day = %s", [day])
    outcome.action = "dropped"
    return outcome


def _rewrite(shard: str, day: date, kinds: list[str], gone: list[str], highest: int, outcome: DayOutcome) -> DayOutcome:
    name = partition_name(day)
    fresh, old = f"{name}_kept", f"{name}_retired"
    upper = day + timedelta(days=1)
    with connections[shard].cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {fresh}")
        cursor.execute(f"CREATE TABLE {fresh} (LIKE {LOG_TABLE} INCLUDING DEFAULTS)")
        cursor.execute(
            f"INSERT INTO {fresh} SELECT * FROM {name} WHERE kind <> ALL(%s) ORDER BY position",  # noqa: S608
            [gone],
        )
        outcome.kept_rows = int(cursor.rowcount)
        # What ATTACH would otherwise build or check while holding the log's lock.
        cursor.execute(f"ALTER TABLE {fresh} ADD PRIMARY KEY (position, id_day)")
        cursor.execute(f"ALTER TABLE {fresh} ADD UNIQUE (tenant_id, write_id, id_day)")
        cursor.execute(
            f"ALTER TABLE {fresh} ADD CONSTRAINT {fresh}_day CHECK (id_day >= '{day}' AND id_day < '{upper}')"
        )
    try:
        started = time.perf_counter()
        with transaction.atomic(using=shard), connections[shard].cursor() as cursor:
            _swap_prologue(cursor)
            cursor.execute(f"ALTER TABLE {LOG_TABLE} DETACH PARTITION {name}")
            if not _unchanged(cursor, name, highest):
                raise _Changed
            cursor.execute(f"ALTER TABLE {name} RENAME TO {old}")
            cursor.execute(f"ALTER TABLE {fresh} RENAME TO {name}")
            cursor.execute(f"ALTER TABLE {LOG_TABLE} ATTACH PARTITION {name} FOR VALUES FROM ('{day}') TO ('{upper}')")
            cursor.execute(f"ALTER TABLE {name} DROP CONSTRAINT {fresh}_day")
            cursor.execute(
                "UPDATE log_partitions SET retired_kinds = %s, retired_at = now() WHERE day = %s", [gone, day]
            )
        outcome.swap_seconds = time.perf_counter() - started  # the log's lock is held until COMMIT
    except (_Changed, OperationalError) as exc:
        logger.warning("log maintenance: %s of %s left for the next run (%s)", day, shard, _why(exc))
        with connections[shard].cursor() as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS {fresh}")
        return outcome
    with connections[shard].cursor() as cursor:
        cursor.execute(f"DROP TABLE {old}")
    outcome.action = "rewritten"
    return outcome


# Tables a pass left behind when it stopped between its COMMIT and its DROP (or mid-copy).
_LEFTOVERS = r"""
SELECT relname FROM pg_class
WHERE relkind = 'r' AND NOT relispartition AND relname ~ '^write_log_[0-9]{8}(_kept|_retired)?$'
"""


def _drop_leftovers(cursor: Any) -> None:
    cursor.execute(_LEFTOVERS)
    for (name,) in cursor.fetchall():
        logger.info("log maintenance: dropping %s, left behind by an earlier pass", name)
        cursor.execute(f"DROP TABLE {name}")


class _Changed(Exception):
    """The partition gained rows after it was archived."""


def _why(exc: BaseException) -> str:
    return "new rows arrived since it was archived" if isinstance(exc, _Changed) else str(exc).splitlines()[0]


def horizon_number(kind: str, current: date | None = None) -> int | None:
    """The first day number of ``kind`` still kept, or ``None`` when the kind is kept forever."""
    keep = settings.WRITES_RETENTION_DAYS.get(kind)
    if keep is None:
        return None
    return day_number((current or today()) - timedelta(days=keep))
