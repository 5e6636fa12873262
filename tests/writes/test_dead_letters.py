"""Dead letters end to end: a batch that keeps failing for a transient reason is retried a capped number of
times with backoff, dead-lettered by its quorum queue, listed, and put back by ``replay_dead_letters``."""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connections
from kombu import Connection

from tests.conftest import ALL_DATABASES, make_tenant
from tests.stack import queue_depth
from writes.models import WriteLog
from writes.queues import dead_letter_queue, dead_letter_queue_name, queue_name
from writes.tasks import MAX_TRANSIENT_ATTEMPTS

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)]


@contextmanager
def failing_transiently(shard: str, tenant_id: uuid.UUID) -> Iterator[None]:
    """Every insert of this tenant's writes fails with a serialization failure: transient, yet never passing."""
    with connections[shard].cursor() as cursor:
        cursor.execute(
            f"""
            CREATE FUNCTION test_fail_tenant() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.tenant_id = '{tenant_id}' THEN
                    RAISE EXCEPTION 'simulated conflict' USING ERRCODE = 'serialization_failure';
                END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER test_fail_tenant BEFORE INSERT ON write_log
                FOR EACH ROW EXECUTE FUNCTION test_fail_tenant();
            """
        )
    try:
        yield
    finally:
        with connections[shard].cursor() as cursor:
            cursor.execute("DROP TRIGGER test_fail_tenant ON write_log; DROP FUNCTION test_fail_tenant();")


def dead_letter_depth() -> int:
    return queue_depth(dead_letter_queue())


def wait_until(condition: Callable[[], bool], *, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not true after {timeout}s"
        time.sleep(0.1)


def test_batch_failing_transiently_goes_to_dead_letters_after_capped_retries_and_replay_applies_it(live_worker):
    with Connection(settings.CELERY_BROKER_URL) as connection:
        dead_letter_queue().bind(connection.channel()).purge()
    stuck, fine = make_tenant("stuck", shard="shard_1"), make_tenant("fine", shard="shard_1")
    stuck_id, fine_id = str(uuid.uuid4()), str(uuid.uuid4())

    with failing_transiently("shard_1", stuck.tenant.id):
        started = time.monotonic()
        assert stuck.post_json("/api/v1/events", {"id": stuck_id, "name": "blocked"}).status_code == 202
        # The failing batch does not hold up others on the same shard.
        assert fine.post_json("/api/v1/events", {"id": fine_id, "name": "ok"}).status_code == 202
        assert fine.get(f"/api/v1/writes/{fine_id}", wait="20").json()["status"] == "applied"

        wait_until(lambda: dead_letter_depth() == 1)
        # Backoff between the capped attempts: 0.2 + 0.4 + 0.8 + 1.6 seconds at least.
        assert time.monotonic() - started >= 2.5
        assert f"giving up after {MAX_TRANSIENT_ATTEMPTS} attempts" in live_worker.log_text()
        assert stuck.get(f"/api/v1/writes/{stuck_id}").json()["status"] == "pending"

        listing = io.StringIO()
        call_command("replay_dead_letters", "--list", stdout=listing)
        text = listing.getvalue()
        assert f"from {queue_name('shard_1')}" in text
        assert "reason=rejected" in text
        assert "writes=1" in text
        assert "1 message(s)" in text
        assert dead_letter_depth() == 1  # listing changed nothing

    replay = io.StringIO()
    call_command("replay_dead_letters", stdout=replay)
    assert "1 message(s) put back" in replay.getvalue()
    assert stuck.get(f"/api/v1/writes/{stuck_id}", wait="20").json()["status"] == "applied"
    assert dead_letter_depth() == 0
    assert WriteLog.objects.using("shard_1").filter(write_id=stuck_id).count() == 1
    assert dead_letter_queue_name().startswith(settings.WRITES_QUEUE_PREFIX)
