"""The client's bounded buffer: captured writes queued per destination, taken out as batches.

Not thread-safe on purpose: each flavour of client guards it with its own lock. Memory is bounded by
``max_writes`` and ``max_bytes``, counted from capture until the write's batch is finished (accepted
or given up), so writes being retried count too.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass

from writes_client.writes import Destination, Item

# '{"batch":[' + ']}'
ENVELOPE_BYTES = 12


@dataclass(slots=True)
class Batch:
    number: int
    destination: Destination
    items: list[Item]

    @property
    def ids(self) -> list[str]:
        return [item.id for item in self.items]


class Buffer:
    def __init__(
        self, *, max_batch: int, max_batch_bytes: int, flush_interval: float, max_writes: int, max_bytes: int
    ) -> None:
        self.max_batch = max_batch
        self.max_batch_bytes = max_batch_bytes
        self.flush_interval = flush_interval
        self.max_writes = max_writes
        self.max_bytes = max_bytes
        self.writes = 0  # captured and not finished: queued or in flight
        self.bytes = 0
        self._queues: dict[Destination, deque[Item]] = {}
        self._queue_bytes: dict[Destination, int] = {}
        self._busy: set[Destination] = set()  # ordered destinations with a batch in flight
        self._in_flight: dict[int, Batch] = {}
        self._numbers = itertools.count(1)
        self._seq = 0
        self._flush_upto = 0
        self._closing = False

    def has_room(self, nbytes: int) -> bool:
        if self.writes == 0:
            return True  # one write always fits, however large (it was checked against the API's limit)
        return self.writes < self.max_writes and self.bytes + nbytes <= self.max_bytes

    def add(self, item: Item) -> bool:
        """Queue a write; True when a sender should look now (a new queue, or a full batch)."""
        self._seq += 1
        item.seq = self._seq
        queue = self._queues.get(item.destination)
        if queue is None:
            queue = self._queues[item.destination] = deque()
            self._queue_bytes[item.destination] = 0
        queue.append(item)
        size = len(item.data) + 1
        self._queue_bytes[item.destination] += size
        self.writes += 1
        self.bytes += size
        return len(queue) == 1 or len(queue) == self.max_batch

    def take(self, now: float) -> Batch | None:
        """A batch that is due (full, old enough, flushed or closing), or None."""
        for destination, queue in self._queues.items():
            if destination in self._busy or not self._due(destination, queue, now):
                continue
            items: list[Item] = []
            size = ENVELOPE_BYTES
            while queue and len(items) < self.max_batch:
                nbytes = len(queue[0].data) + 1
                if items and size + nbytes > self.max_batch_bytes:
                    break
                items.append(queue.popleft())
                size += nbytes
            self._queue_bytes[destination] -= size - ENVELOPE_BYTES
            # Last in the dict's order: the other destinations go first next time.
            del self._queues[destination]
            if queue:
                self._queues[destination] = queue
            else:
                del self._queue_bytes[destination]
            if destination.ordered:
                self._busy.add(destination)
            batch = Batch(next(self._numbers), destination, items)
            self._in_flight[batch.number] = batch
            return batch
        return None

    def _due(self, destination: Destination, queue: deque[Item], now: float) -> bool:
        oldest = queue[0]
        return (
            self._closing
            or len(queue) >= self.max_batch
            or self._queue_bytes[destination] >= self.max_batch_bytes
            or oldest.seq <= self._flush_upto
            or oldest.captured_at + self.flush_interval <= now
        )

    def next_due(self) -> float | None:
        """When the next batch falls due by age (a ``time.monotonic()`` value), if anything waits."""
        times = [q[0].captured_at for d, q in self._queues.items() if d not in self._busy]
        return min(times) + self.flush_interval if times else None

    def finish(self, batch: Batch) -> None:
        """The batch is done with: every write in it accepted or given up."""
        if self._in_flight.pop(batch.number, None) is None:
            return
        self._busy.discard(batch.destination)
        self.writes -= len(batch.items)
        self.bytes -= sum(len(item.data) + 1 for item in batch.items)

    def request_flush(self) -> int:
        """Make everything captured so far due now; answers the capture number to wait for."""
        self._flush_upto = self._seq
        return self._seq

    def finished_upto(self, seq: int) -> bool:
        """Is every write captured up to ``seq`` finished?"""
        firsts = [queue[0].seq for queue in self._queues.values()]
        firsts.extend(batch.items[0].seq for batch in self._in_flight.values() if batch.items)
        return not firsts or min(firsts) > seq

    def close(self) -> None:
        """From now on everything is due at once."""
        self._closing = True

    @property
    def queued(self) -> int:
        return sum(len(queue) for queue in self._queues.values())

    def unfinished(self) -> list[Batch]:
        """Everything not finished, in flight first, as batches; the buffer is empty afterwards.
        For a last delivery at exit, and for reporting what a close left behind."""
        batches = list(self._in_flight.values())
        self._in_flight.clear()
        self._busy.clear()
        for destination, queue in self._queues.items():
            items = list(queue)
            for start in range(0, len(items), self.max_batch):
                batches.append(Batch(next(self._numbers), destination, items[start : start + self.max_batch]))
        self._queues.clear()
        self._queue_bytes.clear()
        self.writes = 0
        self.bytes = 0
        return batches
