"""Gap safety: with several appliers on one shard, some committing slowly, the projector never moves
its checkpoint past a row that commits later.

A deferred trigger makes chosen transactions sleep inside COMMIT, after their rows got positions: the
window in which a plain sequence lets a later transaction commit first. The naive reader
(``position > checkpoint`` over a plain sequence, no append lock) loses rows in that window; the real
applier and projector do not.
"""

from __future__ import annotations

import functools
import threading
import time
import uuid
from collections.abc import Callable, Sequence
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
SLOW_KEY = "slow-commit"
NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)

_SLOW_COMMIT = """
CREATE OR REPLACE FUNCTION test_slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.key = 'slow-commit' THEN PERFORM pg_sleep(current_setting('test.slow_commit_seconds')::float); END IF;
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS test_slow_commit ON write_log;
CREATE CONSTRAINT TRIGGER test_slow_commit AFTER INSERT ON write_log
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION test_slow_commit();
"""


@pytest.fixture
def slow_commits():
    """Rows keyed ``slow-commit`` make their transaction sleep inside COMMIT (positions already taken)."""
    with connections[SHARD].cursor() as cursor:
        cursor.execute(_SLOW_COMMIT)
    yield lambda seconds: _set_slow_commit(seconds)
    with connections[SHARD].cursor() as cursor:
        cursor.execute("DROP TRIGGER IF EXISTS test_slow_commit ON write_log")
        cursor.execute("DROP FUNCTION IF EXISTS test_slow_commit()")
        cursor.execute("ALTER DATABASE " + connections[SHARD].settings_dict["NAME"] + " RESET test.slow_commit_seconds")


def _set_slow_commit(seconds: float) -> None:
    with connections[SHARD].cursor() as cursor:
        # Database-wide, so the appliers' own connections (opened later) see it.
        cursor.execute(
            f"ALTER DATABASE {connections[SHARD].settings_dict['NAME']} SET test.slow_commit_seconds = '{seconds}'"
        )


def sequence_value() -> int:
    """Positions handed out so far: sequences are not transactional, so this sees uncommitted ones."""
    with connections[SHARD].cursor() as cursor:
        cursor.execute("SELECT pg_get_serial_sequence('write_log', 'position')")
        (sequence,) = cursor.fetchone()
        cursor.execute(f"SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {sequence}")
        return int(cursor.fetchone()[0])


ERRORS: list[BaseException] = []


def in_thread(work: Callable[[], Any]) -> threading.Thread:
    def run() -> None:
        try:
            work()
        except BaseException as exc:  # surfaced by the test, not lost in the thread
            ERRORS.append(exc)
            raise
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def events(n: int, *, slow: bool = False) -> list[tuple[str, datetime]]:
    return [(SLOW_KEY if slow and i == 0 else "page_view", NOW) for i in range(n)]


def naive_append(tenant_id: uuid.UUID, batch: list[tuple[str, datetime]]) -> None:
    """An applier over a plain sequence: no append lock, so commit order is not position order."""
    (_, kind, received, rows) = event_message(tenant_id, batch)[0]
    with transaction.atomic(using=SHARD), connections[SHARD].cursor() as cursor:
        for write_id, key, payload, occurred in rows:
            cursor.execute(
                "INSERT INTO write_log (tenant_id, write_id, kind, key, payload, occurred_at, received_at) "
                "VALUES (%s, %s, %s, %s, %s::jsonb, %s, %s)",
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


def slow_then_fast(append: Callable[..., None], poll: Callable[[], int]) -> None:
    """A's transaction takes its positions, then sleeps in COMMIT; B appends after it (higher
    positions) and commits at once (naive) or waits for A (append lock); the reader polls throughout."""
    tenant_id = uuid.uuid4()
    before = sequence_value()
    slow = in_thread(lambda: append(tenant_id, events(10, slow=True)))
    deadline = time.monotonic() + 10
    while sequence_value() < before + 10:  # A has its positions and is committing
        assert not ERRORS, ERRORS
        assert time.monotonic() < deadline
        time.sleep(0.005)
    fast = in_thread(lambda: append(tenant_id, events(10)))
    while slow.is_alive() or fast.is_alive():
        poll()
        time.sleep(0.01)
    slow.join()
    fast.join()
    while poll():  # until caught up
        pass


def test_naive_reader_over_plain_sequence_skips_a_late_commit(slow_commits):
    """The failure the projector must not have: shows this test set-up detects it."""
    slow_commits(0.5)
    reader = NaiveReader()
    slow_then_fast(naive_append, reader.poll)
    all_positions = log_positions(SHARD)
    assert len(all_positions) == 20
    assert sorted(reader.seen) != all_positions
    assert len(reader.seen) == 10  # B's rows only: A's committed below the checkpoint and were never read


def test_projector_never_skips_a_late_commit(slow_commits):
    slow_commits(0.5)
    probe = RecordingProjection()
    slow_then_fast(real_append, lambda: project_slice(SHARD, probe))
    assert probe.seen == log_positions(SHARD)
    assert len(probe.seen) == 20


def test_projector_sees_every_row_once_under_many_concurrent_appliers(slow_commits):
    slow_commits(0.03)
    probe = RecordingProjection()
    appliers = 4
    batches = 12

    def applier(number: int) -> None:
        tenant_id = uuid.uuid4()
        for b in range(batches):
            real_append(tenant_id, events(25, slow=(b + number) % 3 == 0))

    threads = [in_thread(functools.partial(applier, n)) for n in range(appliers)]
    while any(t.is_alive() for t in threads):
        project_slice(SHARD, probe, slice_positions=40)
        time.sleep(0.002)
    for thread in threads:
        thread.join()
    while project_slice(SHARD, probe, slice_positions=40):
        pass
    positions = log_positions(SHARD)
    assert len(positions) == appliers * batches * 25
    assert probe.seen == positions  # every row, once, in position order
