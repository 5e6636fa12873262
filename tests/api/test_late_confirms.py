"""A broker whose confirms arrive after the request's deadline, or never because the connection died
while they were due: the client is told 503 with its ids, and nothing of that request is ever applied
unless the client sends it again.

A TCP relay between the API and RabbitMQ holds back what the broker sends (its confirms among it) while
it forwards every publish at once: the message is in the queue, only its confirm is late (or lost with
the connection).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from django.conf import settings
from django.db import connections

from tests.conftest import ALL_DATABASES, make_tenant
from tests.edge import edge_server
from tests.stack import Worker, queue_depth, queues_of_their_own
from writes.models import WriteLog
from writes.queues import queue_name, shard_queue


class HoldingRelay:
    """Forwards TCP both ways; ``hold()`` keeps what the upstream sends until ``release()``."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._open = threading.Event()
        self._open.set()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def hold(self) -> None:
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, held: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if held:
                    self._open.wait()
                target.sendall(data)
        with contextlib.suppress(OSError):
            target.shutdown(socket.SHUT_WR)

    def cut(self) -> None:
        """Drop every connection made so far, as a broker node that dies does."""
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()


@pytest.fixture
def own_queues() -> Iterator[str]:
    """Queues of this test's own, which no other test's worker consumes."""
    with queues_of_their_own("late") as prefix:
        yield prefix


def _abandoned(shard: str) -> int:
    with connections[shard].cursor() as cursor:
        cursor.execute("SELECT count(*) FROM publish_fates WHERE fate = 'abandoned'")
        return int(cursor.fetchone()[0])


@pytest.mark.e2e
@pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)
def test_a_write_whose_confirm_came_too_late_is_refused_with_its_ids_and_never_applied(own_queues):
    _refuse_then_retry(own_queues, cut_after=None)


@pytest.mark.e2e
@pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)
def test_a_write_whose_connection_died_before_its_confirm_is_refused_and_never_applied(own_queues):
    """The broker stored the message, then the connection died before the confirm reached the API:
    the API cannot know, so it settles the message like a late confirm before answering 503."""
    _refuse_then_retry(own_queues, cut_after=0.3)


def _refuse_then_retry(own_queues: str, *, cut_after: float | None) -> None:
    tenant = make_tenant("late")
    abandoned_before = _abandoned(tenant.shard)
    relay = HoldingRelay(("127.0.0.1", 5672))
    late_id, on_time_id = str(uuid.uuid4()), str(uuid.uuid4())
    broker = f"amqp://guest:guest@127.0.0.1:{relay.port}//"
    # With a cut, the answer must come from the cut, well before the deadline.
    timeout = 1.0 if cut_after is None else 10.0
    try:
        with edge_server(CELERY_BROKER_URL=broker, WRITES_PUBLISH_TIMEOUT_SECONDS=timeout) as server:
            client = server.client(HTTP_AUTHORIZATION=f"Bearer {tenant.api_key}")
            assert client.post("/api/v1/events", {"id": on_time_id, "name": "on time"}).status_code == 202
            relay.hold()
            if cut_after is not None:
                threading.Timer(cut_after, relay.cut).start()
            started = time.monotonic()
            refused = client.post("/api/v1/events", {"id": late_id, "name": "late"})
            elapsed = time.monotonic() - started
            relay.release()
    finally:
        relay.close()
    assert refused.status_code == 503, refused.content
    assert refused["Retry-After"] == "1"
    assert refused.json()["error"]["ids"] == [late_id]
    assert elapsed < 3.0
    # The message did reach its queue: only its confirm was late (or lost).
    assert queue_depth(shard_queue(tenant.shard)) == 2

    worker = Worker(
        [queue_name(alias) for alias in settings.SHARD_ALIASES],
        name="late-confirms",
        environment={"WRITES_QUEUE_PREFIX": own_queues},
    )
    try:
        # The client retries with the same id (named differently here, to tell which message was applied).
        with edge_server() as server:
            client = server.client(HTTP_AUTHORIZATION=f"Bearer {tenant.api_key}")
            assert client.post("/api/v1/events", {"id": late_id, "name": "retried"}).status_code == 202
        # One worker takes the queue in order: once the retry is applied, the late message was handled.
        deadline = time.monotonic() + 30
        while not WriteLog.objects.using(tenant.shard).filter(write_id=late_id).exists():
            assert time.monotonic() < deadline, "the retried write was not applied"
            time.sleep(0.1)
    finally:
        worker.stop()
    rows = dict(WriteLog.objects.using(tenant.shard).filter(tenant_id=tenant.tenant.id).values_list("write_id", "key"))
    assert rows == {uuid.UUID(on_time_id): "on time", uuid.UUID(late_id): "retried"}, "the refused write was applied"
    assert _abandoned(tenant.shard) == abandoned_before + 1  # the API won the race for that message
