"""The client's parts without a server: ids, the buffer, what each answer means, and a client driven
through httpx's mock transport (the real-stack tests are in the repository's tests/client/)."""

from __future__ import annotations

import asyncio
import gzip
import json
import random
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from writes_client import AsyncClient, BufferFull, Client, Dropped, uuid7
from writes_client.buffer import Buffer
from writes_client.delivery import Delivery, RetryPolicy
from writes_client.writes import EVENTS, InvalidWrite, Item, event_write, messages_of, raw_write


def events(n: int) -> list[Item]:
    return [
        event_write(name="e", distinct_id=None, properties={"n": i}, timestamp=None, write_id=None) for i in range(n)
    ]


def sent_ids(request: httpx.Request) -> list[str]:
    body = request.content
    if request.headers.get("content-encoding") == "gzip":
        body = gzip.decompress(body)
    return [write["id"] for write in json.loads(body)["batch"]]


# --- ids --------------------------------------------------------------------------------------


def test_uuid7_has_version_variant_and_time_and_increases() -> None:
    before = time.time_ns() // 1_000_000
    ids = [uuid7() for _ in range(20_000)]
    after = time.time_ns() // 1_000_000
    assert all(i.version == 7 and i.variant == uuid.RFC_4122 for i in ids)
    assert ids == sorted(ids, key=lambda i: i.int)
    assert len(set(ids)) == len(ids)
    assert before <= ids[0].int >> 80 <= after + 10


# --- encoding at capture ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "properties",
    [{"x": float("nan")}, {"x": object()}, {"x": "a\x00b"}, {"x": "\ud800"}, {"x": "y" * (6 * 1024 * 1024)}],
)
def test_capture_refuses_what_the_api_never_accepts(properties: dict[str, object]) -> None:
    with pytest.raises(InvalidWrite):
        event_write(name="e", distinct_id=None, properties=properties, timestamp=None, write_id=None)


def test_capture_keeps_a_backslash_u0000_that_is_text() -> None:
    item = event_write(name="e", distinct_id=None, properties={"x": "\\u0000"}, timestamp=None, write_id=None)
    assert json.loads(item.data)["properties"]["x"] == "\\u0000"


def test_capture_sets_the_id_and_the_time_once() -> None:
    item = raw_write({"name": "e"}, EVENTS)
    write = json.loads(item.data)
    assert write["id"] == item.id
    assert uuid.UUID(item.id).version == 7
    with pytest.raises(InvalidWrite):
        raw_write({"name": "e", "id": "not-a-uuid"}, EVENTS)


# --- buffer -----------------------------------------------------------------------------------


def buffer(**overrides: Any) -> Buffer:
    options: dict[str, Any] = {
        "max_batch": 3,
        "max_batch_bytes": 1 << 20,
        "flush_interval": 1.0,
        "max_writes": 10,
        "max_bytes": 1 << 30,
    }
    return Buffer(**{**options, **overrides})


def test_buffer_batches_by_size_then_by_age() -> None:
    buf = buffer()
    items = events(4)
    now = items[-1].captured_at
    for item in items:
        buf.add(item)
    first = buf.take(now)
    assert first is not None
    assert first.ids == [i.id for i in items[:3]]
    assert buf.take(now) is None  # one left, not old enough
    assert buf.next_due() == pytest.approx(items[3].captured_at + 1.0)
    later = buf.take(now + 1.0)
    assert later is not None
    assert later.ids == [items[3].id]


def test_buffer_bounds_writes_until_their_batch_is_finished() -> None:
    buf = buffer(max_writes=3)
    for item in events(3):
        buf.add(item)
    assert not buf.has_room(10)
    batch = buf.take(time.monotonic())
    assert batch is not None
    assert not buf.has_room(10), "a batch in flight still holds its room"
    buf.finish(batch)
    assert buf.has_room(10)


def test_buffer_sends_an_ordered_destination_one_batch_at_a_time() -> None:
    buf = buffer()
    room = messages_of("r")
    for n in range(6):
        buf.add(raw_write({"sender_id": "a", "body": str(n)}, room))
    first = buf.take(time.monotonic())
    assert first is not None
    assert buf.take(time.monotonic()) is None, "a second batch of the conversation went out before the first finished"
    buf.finish(first)
    assert buf.take(time.monotonic()) is not None


def test_buffer_flush_makes_everything_due_and_tracks_what_is_finished() -> None:
    buf = buffer()
    items = events(2)
    for item in items:
        buf.add(item)
    target = buf.request_flush()
    batch = buf.take(items[0].captured_at)
    assert batch is not None
    assert not buf.finished_upto(target)
    buf.finish(batch)
    assert buf.finished_upto(target)


# --- what answers mean ------------------------------------------------------------------------


def delivery_of(n: int, **policy: float) -> Delivery:
    buf = buffer(max_batch=n)
    for item in events(n):
        buf.add(item)
    batch = buf.take(time.monotonic() + 10)
    assert batch is not None
    return Delivery(batch, RetryPolicy(**policy), 0.0, gzip_min_bytes=0, rng=random.Random(1))


def test_delivery_retries_503_with_the_same_bytes_and_not_before_retry_after() -> None:
    delivery = delivery_of(5)
    first = delivery.request()
    delay = delivery.answered(503, {"retry-after": "2"}, b"{}", now=0.0)
    assert delay >= 2.0
    assert delivery.request() == first
    delay = delivery.failed("ConnectError", now=2.0)
    assert 0 < delay <= 0.2
    assert delivery.request() == first
    delivery.answered(202, {}, b"{}", now=3.0)
    assert delivery.request() is None
    assert len(delivery.accepted) == 5
    assert delivery.retries == 2


def test_backoff_grows_to_its_cap_with_jitter() -> None:
    policy = RetryPolicy(backoff_base=0.1, backoff_cap=2.0)
    rng = random.Random(3)
    delays = [policy.delay(attempt, None, rng) for attempt in range(10)]
    assert all(0.05 <= d <= 0.1 for d in delays[:1])
    assert all(1.0 <= d <= 2.0 for d in delays[5:])


def test_delivery_gives_up_only_the_items_a_400_names() -> None:
    delivery = delivery_of(4)
    ids = [item.id for item in delivery.batch.items]
    delivery.request()
    error = {"error": {"code": "invalid", "details": [{"index": 1, "field": "name"}, {"index": 3, "field": "name"}]}}
    assert delivery.answered(400, {}, json.dumps(error).encode(), now=0.0) == 0.0
    body, _ = delivery.request() or (b"", {})
    assert [w["id"] for w in json.loads(gzip.decompress(body))["batch"]] == [ids[0], ids[2]]
    delivery.answered(202, {}, b"{}", now=0.0)
    assert [(d.reason, d.ids) for d in delivery.dropped] == [("invalid", [ids[1], ids[3]])]


def test_delivery_halves_on_413_and_gives_up_a_single_write_still_too_large() -> None:
    delivery = delivery_of(4)
    ids = [item.id for item in delivery.batch.items]
    delivery.request()
    delivery.answered(413, {}, b"{}", now=0.0)
    delivery.request()
    delivery.answered(202, {}, b"{}", now=0.0)  # ids[0:2]
    delivery.request()
    delivery.answered(413, {}, b"{}", now=0.0)  # ids[2:4] halved again
    delivery.request()
    delivery.answered(413, {}, b"{}", now=0.0)  # ids[2] alone: given up
    delivery.request()
    delivery.answered(202, {}, b"{}", now=0.0)
    assert [i.id for i in delivery.accepted] == [ids[0], ids[1], ids[3]]
    assert [(d.reason, d.ids) for d in delivery.dropped] == [("too_large", [ids[2]])]


def test_delivery_does_not_retry_refusals_and_gives_up_after_its_budget() -> None:
    refused = delivery_of(2)
    refused.request()
    refused.answered(401, {}, b'{"error": {"code": "unauthorized"}}', now=0.0)
    assert refused.request() is None
    assert refused.dropped[0].reason == "refused"
    budget = delivery_of(2, give_up_after=1.0)
    budget.request()
    budget.answered(503, {"retry-after": "5"}, b"{}", now=0.0)
    assert budget.request() is None
    assert budget.dropped[0].reason == "gave_up"


# --- a client over a mock transport -----------------------------------------------------------


class Flaky:
    """Fails requests as told (a status, or a connection error), then accepts; records ids sent."""

    def __init__(self, failures: list[int | None]) -> None:
        self.failures = list(failures)
        self.sent: list[list[str]] = []
        self.accepted: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            ids = sent_ids(request)
            self.sent.append(ids)
            failure = self.failures.pop(0) if self.failures else 202
            if failure is None:
                raise httpx.ConnectError("refused", request=request)
            if failure == 202:
                self.accepted.extend(ids)
            return httpx.Response(failure, json={"accepted": len(ids), "ids": ids}, headers={"retry-after": "0"})


def client_for(handler: Callable[[httpx.Request], httpx.Response], **options: Any) -> Client:
    return Client("http://api.test", "wk_test", transport=httpx.MockTransport(handler), backoff_base=0.01, **options)


def test_client_retries_failures_with_the_ids_it_answered() -> None:
    api = Flaky([503, None, 429, 502, None])
    with client_for(api, max_batch=50, senders=3) as client:
        ids = [client.capture_event("e", properties={"n": n}) for n in range(500)]
        assert client.flush(timeout=10)
        stats = client.stats()
    assert sorted(api.accepted) == sorted(ids)
    assert {write_id for attempt in api.sent for write_id in attempt} == set(ids)
    assert stats.retries == 5
    assert (stats.accepted, stats.dropped) == (500, 0)


def test_client_answers_the_canonical_form_of_a_given_id() -> None:
    api = Flaky([])
    given = "0B5E9A52-2B64-4C0E-9A39-5A3C9F2F1A01"
    with client_for(api) as client:
        assert client.capture_event("e", id=given) == given.lower()
        assert client.capture_event("e", id="not-a-uuid") == "not-a-uuid"  # reported as invalid, not raised
    assert api.accepted == [given.lower()]


def test_client_overflow_drops_new_writes_and_reports_them_without_raising() -> None:
    gate = threading.Event()
    dropped: list[Dropped] = []

    def slow(request: httpx.Request) -> httpx.Response:
        gate.wait(10)
        return httpx.Response(202, json={})

    client = client_for(slow, max_batch=10, max_buffered=20, on_drop=dropped.append, flush_interval=0)
    ids = [client.capture_event("e") for _ in range(30)]
    gate.set()
    client.close(timeout=10)
    assert len(ids) == 30
    assert [d.reason for d in dropped] == ["buffer_full"] * 10
    assert {d.ids[0] for d in dropped} == set(ids[20:])
    strict = client_for(slow, max_buffered=1, raise_errors=True, flush_interval=60)
    gate.clear()
    strict.capture_event("e")
    with pytest.raises(BufferFull):
        strict.capture_event("e")
    gate.set()
    strict.close(timeout=5)


def test_client_blocks_producers_when_full_if_asked() -> None:
    api = Flaky([])
    with client_for(api, max_batch=5, max_buffered=5, on_full="block", flush_interval=0) as client:
        ids = [client.capture_event("e") for _ in range(100)]
        assert client.flush(timeout=10)
    assert sorted(api.accepted) == sorted(ids)


def test_client_close_gives_up_in_time_and_reports_what_it_could_not_send() -> None:
    dropped: list[Dropped] = []
    client = client_for(lambda r: httpx.Response(503, headers={"retry-after": "1"}), on_drop=dropped.append)
    ids = [client.capture_event("e") for _ in range(7)]
    started = time.monotonic()
    assert client.close(timeout=0.5) is False
    assert time.monotonic() - started < 5
    assert sorted(i for d in dropped for i in d.ids) == sorted(ids)
    assert {d.reason for d in dropped} == {"closed"}


def test_async_client_retries_and_flushes() -> None:
    api = Flaky([503, None])

    async def run() -> list[str]:
        async with AsyncClient(
            "http://api.test", "wk_test", transport=httpx.MockTransport(api), backoff_base=0.01, max_batch=20
        ) as client:
            ids = [await client.capture_event("e", properties={"n": n}) for n in range(50)]
            ids.append(await client.send_message("room", sender_id="a", body="hi"))
            assert await client.flush(timeout=10)
        return ids

    ids = asyncio.run(run())
    assert sorted(api.accepted) == sorted(ids)


# --- at exit ----------------------------------------------------------------------------------


class _Recorder(BaseHTTPRequestHandler):
    received: list[str] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        if self.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        self.received.extend(w["id"] for w in json.loads(body)["batch"])
        self.send_response(202)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_writes_captured_before_exit_are_delivered_at_exit(flavour: str) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    program = {
        "sync": f"""
from writes_client import Client
client = Client({url!r}, "wk_x", flush_interval=60)
print("\\n".join(client.capture_event("e") for _ in range(25)))
""",
        "async": f"""
import asyncio
from writes_client import AsyncClient
client = AsyncClient({url!r}, "wk_x", flush_interval=60)
async def main():
    return [await client.capture_event("e") for _ in range(25)]
print("\\n".join(asyncio.run(main())))
""",
    }[flavour]
    _Recorder.received = []
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True)
    server.shutdown()
    assert sorted(_Recorder.received) == sorted(done.stdout.split())
    assert len(_Recorder.received) == 25
