"""The load generator: keep-alive HTTP/1.1 connections driven by asyncio, in a process of its own.

Closed loop (each connection sends its next request when the previous answer arrives) finds capacity;
open loop (requests scheduled at a fixed rate, latency counted from the scheduled time, so a stalled
server cannot hide its queueing) measures latency at a given offered rate. Reports its own CPU time.

Run as ``python -m bench.loadgen`` with a JSON ``LoadSpec`` on stdin; prints a JSON result on stdout.
No Django here: the generator must stay cheap.
"""

from __future__ import annotations

import asyncio
import json
import random
import resource
import sys
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class LoadSpec:
    host: str
    port: int
    path: str
    api_keys: list[str]
    duration: float
    batch_size: int = 0  # 0: one event object per request; N: {"batch": [N events]}
    connections: int = 32
    rate: float = 0.0  # requests/s offered; 0 means closed loop
    timeout: float = 10.0
    body_variants: int = 64
    kind: str = "event"  # "event", "message" (chat) or "transfer" (ledger)
    # Chat: each key posts to conversations room-0 … room-{conversations-1}, from senders user-0 … user-{members-1}.
    conversations: int = 1
    members: int = 50
    # Ledger: accounts equity, acct-0 … acct-{accounts-1}, guard-0 … guard-{guarded-1} (no_overdraft).
    accounts: int = 100
    guarded: int = 20
    guarded_share: float = 0.1


@dataclass
class LoadResult:
    requests: int = 0
    ok: int = 0
    writes_accepted: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)
    # Writes accepted per second of the run, for the throughput-over-time plot.
    accepted_timeline: list[int] = field(default_factory=list)
    offered_rate: float = 0.0
    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0
    cpu_percent_of_one_core: float = 0.0
    started_at: float = 0.0


def event_body(batch_size: int, rng: random.Random) -> bytes:
    def event(n: int) -> dict[str, Any]:
        return {
            "name": f"page_view_{n % 7}",
            "distinct_id": f"user-{rng.randrange(10_000)}",
            "properties": {"path": f"/p/{rng.randrange(1000)}", "n": n, "ok": True},
        }

    if batch_size <= 0:
        return json.dumps(event(rng.randrange(1000))).encode()
    return json.dumps({"batch": [event(n) for n in range(batch_size)]}).encode()


def message_body(spec: LoadSpec, rng: random.Random) -> bytes:
    """One chat message (the server assigns its id, so repeating the body repeats no id)."""
    sender = f"user-{rng.randrange(spec.members)}"
    return json.dumps({"sender_id": sender, "body": f"hello from {sender}: {rng.randrange(10**6)}"}).encode()


# Transfer ids carry the request's number in their first 8 hex digits: the bodies are built before the
# clock starts with this placeholder, and each request writes its own number over it, so every
# transfer id of the run is unique (ids are idempotency keys: a repeated one would not be applied).
REQUEST_PLACEHOLDER = b"RRRRRRRR"
# An open-loop request due before the end of the run may wait this long after it for a free connection
# before it counts as not sent.
NOT_SENT_GRACE_S = 1.0


def transfer_body(spec: LoadSpec, rng: random.Random, nonce: str) -> bytes:
    """A transfer, or ``{"batch": [...]}`` of them; ``guarded_share`` of them touch a no_overdraft
    account (half fund one from equity, half spend from one, which may be refused for lack of funds)."""

    def transfer(n: int) -> dict[str, Any]:
        if rng.random() < spec.guarded_share:
            guard = f"guard-{rng.randrange(spec.guarded)}"
            other = f"acct-{rng.randrange(spec.accounts)}"
            debit, credit = ("equity", guard) if n % 2 == 0 else (guard, other)
        else:
            debit, credit = rng.sample([f"acct-{a}" for a in range(spec.accounts)] + ["equity"], 2)
        transfer_id = f"{REQUEST_PLACEHOLDER.decode()}-{nonce[:4]}-4{nonce[4:7]}-8{n:03x}-{nonce[7:19]}"
        return {
            "id": transfer_id,
            "debit_account": debit,
            "credit_account": credit,
            "amount": rng.randrange(1, 100),
            "currency": "EUR",
        }

    if spec.batch_size <= 0:
        return json.dumps(transfer(0)).encode()
    return json.dumps({"batch": [transfer(n) for n in range(spec.batch_size)]}).encode()


def _bodies(spec: LoadSpec, rng: random.Random) -> list[bytes]:
    if spec.kind == "message":
        return [message_body(spec, rng) for _ in range(spec.body_variants)]
    if spec.kind == "transfer":
        nonce = uuid.uuid4().hex
        return [transfer_body(spec, rng, nonce) for _ in range(spec.body_variants)]
    return [event_body(spec.batch_size, rng) for _ in range(spec.body_variants)]


def build_requests(spec: LoadSpec) -> list[list[bytes]]:
    """Ready-to-send requests per API key (chat: per key and conversation), built before the clock starts."""
    rng = random.Random(7)
    per_key = []
    for key in spec.api_keys:
        paths = (
            [spec.path.format(conversation=f"room-{c}") for c in range(spec.conversations)]
            if spec.kind == "message"
            else [spec.path]
        )
        requests = []
        for n, body in enumerate(_bodies(spec, rng)):
            head = (
                f"POST {paths[n % len(paths)]} HTTP/1.1\r\nHost: {spec.host}:{spec.port}\r\n"
                f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\nConnection: keep-alive\r\n"
            )
            requests.append(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
        per_key.append(requests)
    return per_key


class _Run:
    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        self.requests = build_requests(spec)
        self.numbered = spec.kind == "transfer"
        self.writes_per_request = max(1, spec.batch_size)
        self.latencies: list[float] = []
        self.errors: Counter[str] = Counter()
        self.timeline: Counter[int] = Counter()
        self.sent = 0
        self.ok = 0
        self.start = 0.0
        self.stop_at = 0.0

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(self.spec.host, self.spec.port, limit=1 << 20)

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
        writer.write(request)
        status_line = await reader.readline()
        if not status_line:
            raise ConnectionError("closed")
        status = int(status_line.split(b" ", 2)[1])
        length = 0
        closing = False
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.partition(b":")
            lowered = name.strip().lower()
            if lowered == b"content-length":
                length = int(value.strip())
            elif lowered == b"connection" and value.strip().lower() == b"close":
                closing = True
        if length:
            await reader.readexactly(length)
        if closing:
            raise _ServerClosed(status)
        return status

    def _record(self, status: int, scheduled: float) -> None:
        now = time.monotonic()
        self.latencies.append(now - scheduled)
        if 200 <= status < 300:
            self.ok += 1
            self.timeline[int(now - self.start)] += self.writes_per_request
        else:
            self.errors[str(status)] += 1

    async def _connection_loop(self, index: int, schedule: asyncio.Queue[float] | None) -> None:
        requests = self.requests[index % len(self.requests)]
        reader = writer = None
        n = index
        while True:
            if schedule is None:
                if time.monotonic() >= self.stop_at:
                    break
                scheduled = time.monotonic()
            else:
                scheduled = await schedule.get()
                if scheduled < 0:
                    break
                if time.monotonic() >= self.stop_at + NOT_SENT_GRACE_S:
                    # Offered during the run and still not sent well after it: the server fell behind the
                    # offered rate. (One offered in the run's last instant and sent a moment after its end
                    # is sent, and its latency counts from when it was due, like every other.)
                    self.errors["not_sent"] += 1
                    continue
            try:
                if writer is None:
                    reader, writer = await asyncio.wait_for(self._connect(), self.spec.timeout)
                assert reader is not None
                assert writer is not None
                self.sent += 1
                request = requests[n % len(requests)]
                if self.numbered:
                    request = request.replace(REQUEST_PLACEHOLDER, b"%08x" % self.sent)
                status = await asyncio.wait_for(self._exchange(reader, writer, request), self.spec.timeout)
                self._record(status, scheduled)
            except _ServerClosed as closed:
                self._record(closed.status, scheduled)
                _close(writer)
                writer = None
            except (OSError, ConnectionError, asyncio.IncompleteReadError, ValueError, IndexError):
                self.errors["connection"] += 1
                _close(writer)
                writer = None
                await asyncio.sleep(0.01)
            except TimeoutError:
                self.errors["timeout"] += 1
                _close(writer)
                writer = None
            n += 1
        _close(writer)

    async def _scheduler(self, schedule: asyncio.Queue[float]) -> None:
        interval = 1.0 / self.spec.rate
        next_at = self.start
        while next_at < self.stop_at:
            now = time.monotonic()
            while next_at <= now and next_at < self.stop_at:
                schedule.put_nowait(next_at)
                next_at += interval
            await asyncio.sleep(max(0.0, min(next_at - time.monotonic(), 0.005)))
        for _ in range(self.spec.connections):
            schedule.put_nowait(-1.0)

    async def run(self) -> LoadResult:
        self.start = time.monotonic()
        self.stop_at = self.start + self.spec.duration
        cpu_before = _cpu_seconds()
        wall_start = time.time()
        schedule: asyncio.Queue[float] | None = asyncio.Queue() if self.spec.rate > 0 else None
        tasks = [asyncio.create_task(self._connection_loop(i, schedule)) for i in range(self.spec.connections)]
        if schedule is not None:
            tasks.append(asyncio.create_task(self._scheduler(schedule)))
        await asyncio.gather(*tasks)
        wall = time.monotonic() - self.start
        cpu = _cpu_seconds() - cpu_before
        seconds = max(1, int(self.spec.duration + 0.999))
        return LoadResult(
            requests=self.sent,
            ok=self.ok,
            writes_accepted=self.ok * self.writes_per_request,
            errors=dict(self.errors),
            latency_ms=percentiles_ms(self.latencies),
            accepted_timeline=[self.timeline.get(second, 0) for second in range(seconds)],
            offered_rate=self.spec.rate,
            wall_seconds=round(wall, 3),
            cpu_seconds=round(cpu, 3),
            cpu_percent_of_one_core=round(100 * cpu / wall, 1) if wall else 0.0,
            started_at=wall_start,
        )


class _ServerClosed(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def _close(writer: asyncio.StreamWriter | None) -> None:
    if writer is not None:
        writer.close()


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentiles_ms(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {}
    ordered = sorted(samples)

    def at(fraction: float) -> float:
        return round(1000 * ordered[min(len(ordered) - 1, int(fraction * len(ordered)))], 2)

    return {"p50": at(0.50), "p95": at(0.95), "p99": at(0.99), "max": round(1000 * ordered[-1], 2)}


def main() -> None:
    spec = LoadSpec(**json.loads(sys.stdin.read()))
    result = asyncio.run(_Run(spec).run())
    sys.stdout.write(json.dumps(asdict(result)))


if __name__ == "__main__":
    main()
