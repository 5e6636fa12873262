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


def build_requests(spec: LoadSpec) -> list[list[bytes]]:
    """Ready-to-send requests per API key: the bodies are built before the clock starts."""
    rng = random.Random(7)
    bodies = [event_body(spec.batch_size, rng) for _ in range(spec.body_variants)]
    per_key = []
    for key in spec.api_keys:
        head = (
            f"POST {spec.path} HTTP/1.1\r\nHost: {spec.host}:{spec.port}\r\nAuthorization: Bearer {key}\r\n"
            "Content-Type: application/json\r\nConnection: keep-alive\r\n"
        )
        per_key.append([f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body for body in bodies])
    return per_key


class _Run:
    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        self.requests = build_requests(spec)
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
                if time.monotonic() >= self.stop_at:
                    # Offered during the run but never sent: the server fell behind the offered rate.
                    self.errors["not_sent"] += 1
                    continue
            try:
                if writer is None:
                    reader, writer = await asyncio.wait_for(self._connect(), self.spec.timeout)
                assert reader is not None
                assert writer is not None
                self.sent += 1
                status = await asyncio.wait_for(
                    self._exchange(reader, writer, requests[n % len(requests)]), self.spec.timeout
                )
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
