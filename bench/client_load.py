"""The ``client`` scenario's load: producer threads each sending one event at a time through the
client library (``writes_client.Client``), which batches, gzips and retries them on their way.

Contract (for ``bench.runner``): ``run_client_load(ClientLoadSpec)`` or ``python -m bench.client_load``
with a JSON ``ClientLoadSpec`` on stdin (a JSON ``ClientLoadResult`` on stdout), like ``bench.loadgen``.

- ``producers`` threads (default 32) run for ``duration`` seconds; producer *i* uses
  ``api_keys[i % len(api_keys)]``. Producers with the same key share one ``Client`` (one per key, as
  one service process would have). Each producer loops: one ``capture_event`` call, the next when it
  returned; nothing else paces it. The clients use ``on_full="block"``, so when the API falls behind
  the producers wait (closed loop): nothing is dropped for being too fast. ``client_options`` are
  passed to each ``Client`` over ``CLIENT_DEFAULTS`` (blocking, at most 10,000 writes buffered).
- After ``duration`` the producers stop and every client is closed (flushed) within
  ``drain_timeout`` seconds; ``wall_seconds`` runs from the start to that moment, so writes still
  being sent when the producers stopped count in the time as well as in ``writes_accepted``.
- ``writes_accepted`` is the number of writes the API answered 202 (each exactly the ids captured;
  the runner checks the log holds exactly that many rows for the tenants). ``writes_captured`` =
  accepted + dropped; ``errors`` counts dropped writes by reason (should be empty) and ``retries``.
- ``latency_ms``: capture → 202 of each write (percentiles, ms): what the client's batching adds
  to the time a write becomes durable. ``capture_call_ms``: the producer's own cost per call.
- ``accepted_timeline``: writes accepted per second of the run (``duration`` rounded up, plus the
  drain's seconds). Field names match ``bench.loadgen.LoadResult`` where they mean the same thing.

No Django here: the load generator must stay cheap, and the client library needs none.
"""

from __future__ import annotations

import json
import resource
import sys
import threading
import time
from array import array
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from writes_client import Accepted, Client, Dropped

EVENT_NAMES = [f"page_view_{n}" for n in range(7)]
# Producers wait for room instead of losing writes; and since a closed loop fills any buffer, the
# buffer's size sets the capture → 202 latency (10,000 writes: well under a second at the API's
# rate; the library's default 100,000 measured 9 s p50 here, with the same throughput).
CLIENT_DEFAULTS: dict[str, Any] = {"on_full": "block", "block_timeout": 3600.0, "max_buffered": 10_000}


@dataclass
class ClientLoadSpec:
    url: str  # the API's base URL, e.g. http://127.0.0.1:8000
    api_keys: list[str]
    duration: float
    producers: int = 32
    drain_timeout: float = 60.0
    # Passed to writes_client.Client (e.g. {"max_batch": 1000, "flush_interval": 0.2, "senders": 2}).
    client_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ClientLoadResult:
    requests: int = 0  # HTTP requests the clients sent, retries included
    ok: int = 0  # batches answered 202
    writes_captured: int = 0
    writes_accepted: int = 0
    writes_dropped: int = 0
    retries: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # dropped writes by reason
    latency_ms: dict[str, float] = field(default_factory=dict)  # capture → 202, per write
    capture_call_ms: dict[str, float] = field(default_factory=dict)  # one capture_event call
    accepted_timeline: list[int] = field(default_factory=list)
    producers: int = 0
    wall_seconds: float = 0.0
    drain_seconds: float = 0.0
    cpu_seconds: float = 0.0
    cpu_percent_of_one_core: float = 0.0
    started_at: float = 0.0  # time.time() at the start


class _Run:
    def __init__(self, spec: ClientLoadSpec) -> None:
        self.spec = spec
        self.lock = threading.Lock()
        self.latencies = array("d")
        self.timeline: Counter[int] = Counter()
        self.dropped: Counter[str] = Counter()
        self.batches = 0
        self.start = 0.0
        options = {**CLIENT_DEFAULTS, **spec.client_options}
        self.clients = [
            Client(spec.url, key, on_accepted=self._accepted, on_drop=self._dropped, **options) for key in spec.api_keys
        ]

    def _accepted(self, report: Accepted) -> None:
        with self.lock:
            self.batches += 1
            self.latencies.extend(report.accepted_at - captured for captured in report.captured_at)
            self.timeline[int(report.accepted_at - self.start)] += len(report.ids)

    def _dropped(self, report: Dropped) -> None:
        with self.lock:
            self.dropped[report.reason] += len(report.ids)

    def _produce(self, index: int, stop_at: float, calls: array[float]) -> None:
        client = self.clients[index % len(self.clients)]
        clock = time.perf_counter
        n = 0
        while time.monotonic() < stop_at:
            started = clock()
            client.capture_event(
                EVENT_NAMES[n % 7],
                distinct_id=f"user-{index}-{n % 1000}",
                properties={"path": f"/p/{n % 1000}", "n": n, "ok": True},
            )
            calls.append(clock() - started)
            n += 1

    def run(self) -> ClientLoadResult:
        cpu_before = _cpu_seconds()
        wall_start = time.time()
        self.start = time.monotonic()
        stop_at = self.start + self.spec.duration
        calls = [array("d") for _ in range(self.spec.producers)]
        threads = [
            threading.Thread(target=self._produce, args=(i, stop_at, calls[i]), name=f"producer-{i}")
            for i in range(self.spec.producers)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        drain_start = time.monotonic()
        deadline = drain_start + self.spec.drain_timeout
        for client in self.clients:
            client.close(timeout=max(0.0, deadline - time.monotonic()))
        end = time.monotonic()
        wall = end - self.start
        cpu = _cpu_seconds() - cpu_before
        stats = [client.stats() for client in self.clients]
        seconds = max(1, int(wall + 0.999))
        return ClientLoadResult(
            requests=sum(s.requests for s in stats),
            ok=self.batches,
            writes_captured=sum(s.captured for s in stats),
            writes_accepted=sum(s.accepted for s in stats),
            writes_dropped=sum(s.dropped for s in stats),
            retries=sum(s.retries for s in stats),
            errors=dict(self.dropped),
            latency_ms=percentiles_ms(self.latencies),
            capture_call_ms=percentiles_ms([value for thread_calls in calls for value in thread_calls]),
            accepted_timeline=[self.timeline.get(second, 0) for second in range(seconds)],
            producers=self.spec.producers,
            wall_seconds=round(wall, 3),
            drain_seconds=round(end - drain_start, 3),
            cpu_seconds=round(cpu, 3),
            cpu_percent_of_one_core=round(100 * cpu / wall, 1) if wall else 0.0,
            started_at=wall_start,
        )


def run_client_load(spec: ClientLoadSpec) -> ClientLoadResult:
    return _Run(spec).run()


def percentiles_ms(samples: Iterable[float]) -> dict[str, float]:
    ordered: list[float] = sorted(samples)
    if not ordered:
        return {}

    def at(fraction: float) -> float:
        return round(1000 * ordered[min(len(ordered) - 1, int(fraction * len(ordered)))], 3)

    return {"p50": at(0.50), "p95": at(0.95), "p99": at(0.99), "max": round(1000 * ordered[-1], 3)}


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    spec = ClientLoadSpec(**json.loads(sys.stdin.read()))
    sys.stdout.write(json.dumps(asdict(run_client_load(spec))))


if __name__ == "__main__":
    main()
