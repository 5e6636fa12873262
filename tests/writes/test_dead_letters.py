"""Dead letters end to end: a batch that keeps failing for a transient reason is retried a capped number of
times with backoff, dead-lettered by its quorum queue, listed, and put back by ``replay_dead_letters``."""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import Callable

import pytest
from django.conf import settings
from django.core.management import call_command
from kombu import Connection

from tests.conftest import ALL_DATABASES, make_tenant
from tests.stack import dead_letter_depth, failing_transiently
from writes.models import WriteLog
from writes.queues import dead_letter_queue, dead_letter_queue_name, queue_name
from writes.tasks import MAX_TRANSIENT_ATTEMPTS

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)]


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
