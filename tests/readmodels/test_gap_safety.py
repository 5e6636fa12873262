"""Gap safety: with several appliers on one shard, some committing late, the projector never moves its
checkpoint past a row that commits later.

A deferred trigger holds chosen transactions inside COMMIT, after their rows got their positions: the
window in which a plain sequence lets a later transaction commit first. Rows keyed ``gated-commit``
wait until the test opens a gate (an advisory lock it holds), so the interleaving is forced, not timed;
rows keyed ``slow-commit`` sleep a little, for the many-appliers run. The naive reader
(``position > checkpoint`` over a plain sequence, no append lock) loses rows in that window; the real
applier and projector do not.
"""

from __future__ import annotations

import functools
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
from django.db import connections, transaction

from readmodels.projections import LogRow
from readmodels.projector import project_slice
from tests.conftest import ALL_DATABASES
from tests.readmodels.helpers import event_message, log_positions
from writes.apply import apply_batch

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)

SHARD = "shard_0"
GATE_KEY = 0x6741_5445  # "gATE"
NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)

_LATE_COMMIT = f"""
CREATE OR REPLACE FUNCTION test_late_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.key = 'gated-commit' THEN PERFORM pg_advisory_xact_lock({GATE_KEY}); END IF;
    IF NEW.key = 'slow-commit' THEN PERFORM pg_sleep(0.03); END IF;
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS test_late_commit ON write_log;
CREATE CONSTRAINT TRIGGER test_late_commit AFTER INSERT ON write_log
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION test_late_commit();
"""

ERRORS: list[BaseException] = []


@pytest.fixture(autouse=True)
def late_commits() -> Iterator[None]:
    ERRORS.clear()
    with connections[SHARD].cursor() as cursor:
        cursor.execute(_LATE_COMMIT)
    yield
    with connections[SHARD].cursor() as cursor:
        cursor.execute("DROP TRIGGER IF EXISTS test_late_commit ON write_log")
        cursor.execute("DROP FUNCTION IF EXISTS test_late_commit()")
    assert not ERRORS, ERRORS


@contextmanager
def gate_closed() -> Iterator[None]:
    """While inside, ``gated-commit`` transactions wait in COMMIT."""
    with connections[SHARD].cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s)", [GATE_KEY])
    try:
        yield
    finally:
        with connections[SHARD].cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [GATE_KEY])


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 20
    while not condition():
        assert not ERRORS, ERRORS
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.005)


def positions_handed_out() -> int:
    """Sequences are not transactional: this sees positions of rows not committed yet."""
    with connections[SHARD].cursor() as cursor:
        cursor.execute("SELECT pg_get_serial_sequence('write_log', 'position')")
        (sequence,) = cursor.fetchone()
        cursor.execute(f"SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {sequence}")
        return int(cursor.fetchone()[0])


def sessions_waiting_on_locks() -> int:
    with connections[SHARD].cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return int(cursor.fetchone()[0])


def in_thread(work: Callable[[], Any]) -> threading.Thread:
    def run() -> None:
        try:
            work()
        except BaseException as exc:  # surfaced by the test, not lost in the thread
            ERRORS.append(exc)
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def events(n: int, *, late: str | None = None) -> list[tuple[str, datetime]]:
    return [(late if late and i == 0 else "page_view", NOW) for i in range(n)]


def naive_append(tenant_id: uuid.UUID, batch: list[tuple[str, datetime]]) -> None:
    """An applier over a plain sequence: no append lock, so commit order is not position order."""
    (_, kind, received, rows) = event_message(tenant_id, batch)[0]
    with transaction.atomic(using=SHARD), connections[SHARD].cursor() as cursor:
        for write_id, key, payload, occurred in rows:
            cursor.execute(
                "INSERT INTO write_log (tenant_id, write_id, kind, key, payload, occurred_at, received_at, id_day) "
                "VALUES (%s, %s, %s, %s, %s::jsonb, %s, %s, (now() AT TIME ZONE 'UTC')::date)",
                [str(tenant_id), write_id, kind, key, payload, occurred, received],
            )


def real_append(tenant_id: uuid.UUID, batch: list[tuple[str, datetime]]) -> None:
    apply_batch(shard=SHARD, groups=event_message(tenant_id, batch))


class NaiveReader:
    """Reads committed rows with ``position > checkpoint`` and moves the checkpoint to the last one."""

    def __init__(self) -> None:
        self.checkpoint = 0
        self.seen: list[int] = []

    def poll(self) -> int:
        with connections[SHARD].cursor() as cursor:
            cursor.execute("SELECT position FROM write_log WHERE position > %s ORDER BY position", [self.checkpoint])
            found = [p for (p,) in cursor.fetchall()]
        if found:
            self.seen.extend(found)
            self.checkpoint = found[-1]
        return len(found)


class RecordingProjection:
    """A projection that remembers every position the real projector hands it."""

    name = "gap_probe"
    kinds = frozenset({"event"})

    def __init__(self) -> None:
        self.seen: list[int] = []

    def apply(self, cursor: Any, rows: Sequence[LogRow]) -> None:
        self.seen.extend(row.position for row in rows)


def catch_up(poll: Callable[[], int]) -> None:
    while poll():
        pass


def test_naive_reader_over_plain_sequence_skips_a_late_commit():
    """The failure the projector must not have, forced step by step: shows this set-up detects it."""
    tenant_id = uuid.uuid4()
    reader = NaiveReader()
    start = positions_handed_out()
    with gate_closed():
        first = in_thread(lambda: naive_append(tenant_id, events(10, late="gated-commit")))
        wait_until(lambda: positions_handed_out() >= start + 10, "the first has its positions")
        second = in_thread(lambda: naive_append(tenant_id, events(10)))
        second.join()  # commits at once, above the first's uncommitted positions
        catch_up(reader.poll)
    first.join()
    catch_up(reader.poll)

    all_positions = log_positions(SHARD)
    assert len(all_positions) == 20
    assert len(reader.seen) == 10  # the second's rows only ...
    assert min(reader.seen) > max(set(all_positions) - set(reader.seen))  # ... the first's were skipped for good


def test_projector_never_skips_a_late_commit():
    tenant_id = uuid.uuid4()
    probe = RecordingProjection()
    start = positions_handed_out()
    with gate_closed():
        first = in_thread(lambda: real_append(tenant_id, events(10, late="gated-commit")))
        wait_until(lambda: positions_handed_out() >= start + 10, "the first has its positions")
        second = in_thread(lambda: real_append(tenant_id, events(10)))
        # The second waits for the append lock the first holds to its COMMIT.
        wait_until(lambda: sessions_waiting_on_locks() >= 2, "both appliers wait")
        catch_up(lambda: project_slice(SHARD, probe))
        assert probe.seen == []
    first.join()
    second.join()
    catch_up(lambda: project_slice(SHARD, probe))

    assert probe.seen == log_positions(SHARD)
    assert len(probe.seen) == 20


def test_projector_sees_every_row_once_under_many_concurrent_appliers():
    probe = RecordingProjection()
    appliers = 4
    batches = 12

    def applier(number: int) -> None:
        tenant_id = uuid.uuid4()
        for b in range(batches):
            real_append(tenant_id, events(25, late="slow-commit" if (b + number) % 3 == 0 else None))

    threads = [in_thread(functools.partial(applier, n)) for n in range(appliers)]
    while any(t.is_alive() for t in threads):
        project_slice(SHARD, probe, slice_positions=40)
        time.sleep(0.002)
    for thread in threads:
        thread.join()
    catch_up(lambda: project_slice(SHARD, probe, slice_positions=40))

    positions = log_positions(SHARD)
    assert len(positions) == appliers * batches * 25
    assert probe.seen == positions  # every row, once, in position order
