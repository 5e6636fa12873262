"""The threaded client: capture calls return at once; sender threads batch, gzip, post and retry.

Capturing costs the caller an id, one JSON encoding and a lock; it never does I/O and, by default,
never raises. Sender threads take due batches from the buffer (several at once for events, one at a
time per conversation and for transfers, which keep their order) and deliver them.
"""

from __future__ import annotations

import atexit
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime
from types import TracebackType
from typing import Any, Unpack

import httpx

from writes_client.buffer import Batch
from writes_client.core import (
    Accepted,
    BufferFull,
    ClientClosed,
    OptionArgs,
    Options,
    Reporter,
    Stats,
    WriteStatus,
    base_headers,
    logger,
    status_path,
)
from writes_client.delivery import Delivery, Dropped
from writes_client.ids import new_write_id
from writes_client.writes import InvalidWrite, Item, event_write, message_write, transfer_write


class Client:
    """A client of one API and one API key. Thread-safe; make one per process and share it.

    >>> client = Client("http://127.0.0.1:8000", "wk_...")
    >>> write_id = client.capture_event("signup", distinct_id="user-42", properties={"plan": "pro"})
    >>> client.close()  # or: with Client(...) as client: ...; it also flushes at interpreter exit
    """

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        transport: httpx.BaseTransport | None = None,
        **options: Unpack[OptionArgs],
    ) -> None:
        self.options = Options(**options)
        self._http = httpx.Client(
            base_url=url,
            headers=base_headers(api_key),
            timeout=self.options.timeout,
            transport=transport,
            limits=httpx.Limits(max_connections=self.options.senders + 4),
        )
        self._buffer = self.options.buffer()
        self._policy = self.options.retry_policy()
        self._report = Reporter(self.options)
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # senders wait here for a due batch
        self._room = threading.Condition(self._lock)  # producers (room) and flushes (done) wait here
        self._abort = threading.Event()  # set when close() ran out of time: stop retrying
        self._stats = Stats()
        self._closed = False
        self._senders = [
            threading.Thread(target=self._send_loop, name=f"writes-client-sender-{n}", daemon=True)
            for n in range(self.options.senders)
        ]
        for thread in self._senders:
            thread.start()
        atexit.register(self._at_exit)

    # --- capture: the caller's hot path ---------------------------------------------------------

    def capture_event(
        self,
        name: str,
        *,
        distinct_id: str | None = None,
        properties: dict[str, Any] | None = None,
        timestamp: datetime | str | None = None,
        id: str | uuid.UUID | None = None,
    ) -> str:
        """Queue an analytics event; answers its id. ``timestamp`` defaults to now."""
        return self._capture(
            id,
            lambda write_id: event_write(
                name=name, distinct_id=distinct_id, properties=properties, timestamp=timestamp, write_id=write_id
            ),
        )

    def send_message(
        self,
        conversation_id: str,
        *,
        sender_id: str,
        body: str,
        sent_at: datetime | str | None = None,
        id: str | uuid.UUID | None = None,
    ) -> str:
        """Queue a chat message; a conversation's messages are sent in capture order, one batch at a time."""
        return self._capture(
            id,
            lambda write_id: message_write(
                conversation_id=conversation_id, sender_id=sender_id, body=body, sent_at=sent_at, write_id=write_id
            ),
        )

    def transfer(
        self,
        *,
        debit_account: str,
        credit_account: str,
        amount: int,
        currency: str,
        metadata: dict[str, Any] | None = None,
        id: str | uuid.UUID | None = None,
    ) -> str:
        """Queue a ledger transfer (``amount`` in minor units); transfers are sent in the order captured.
        Pass your own ``id`` (e.g. derived from an order) to make a transfer idempotent across processes."""
        return self._capture(
            id,
            lambda write_id: transfer_write(
                debit_account=debit_account,
                credit_account=credit_account,
                amount=amount,
                currency=currency,
                metadata=metadata,
                write_id=write_id,
            ),
        )

    def capture(self, item: Item) -> str:
        """Queue a write built by ``writes_client.writes`` (the command line's way in)."""
        return self._capture(item.id, lambda _: item)

    def _capture(self, given: str | uuid.UUID | None, build: Callable[[str], Item]) -> str:
        write_id = str(given) if given is not None else new_write_id()
        try:
            item = build(write_id)
            write_id = item.id  # in its canonical form
        except InvalidWrite as exc:
            return self._refuse("invalid", write_id, exc, str(exc))
        with self._lock:
            if self._closed:
                refusal: tuple[str, Exception] | None = ("closed", ClientClosed("the client is closed"))
            elif self._buffer.has_room(len(item.data)) or self._wait_for_room(len(item.data)):
                refusal = None
                self._stats.captured += 1
                if self._buffer.add(item):
                    self._work.notify()
            else:
                refusal = ("buffer_full", BufferFull(f"{self._buffer.writes} writes buffered"))
        if refusal is not None:
            return self._refuse(refusal[0], write_id, refusal[1], str(refusal[1]))
        return write_id

    def _wait_for_room(self, nbytes: int) -> bool:
        """With ``on_full="block"``, wait (lock held) up to ``block_timeout`` for room."""
        if self.options.on_full != "block":
            return False
        deadline = time.monotonic() + self.options.block_timeout
        while not self._buffer.has_room(nbytes):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._closed:
                return False
            self._room.wait(remaining)
        return True

    def _refuse(self, reason: str, write_id: str, exc: Exception, detail: str) -> str:
        with self._lock:
            self._stats.dropped += 1
        self._report.dropped(Dropped(reason, [write_id], None, detail))
        if self.options.raise_errors:
            raise exc
        return write_id

    # --- sending --------------------------------------------------------------------------------

    def _send_loop(self) -> None:
        while True:
            with self._lock:
                batch = self._next_batch()
            if batch is None:
                return
            try:
                delivery = self._deliver(batch)
            except Exception:  # a bug must not kill the sender and strand the buffer
                logger.exception("delivering a batch failed")
                delivery = Delivery(batch, self._policy, time.monotonic())
                delivery.abandon("refused")
            self._finish(batch, delivery)

    def _next_batch(self) -> Batch | None:
        """A due batch, waiting (lock held) until there is one; None once closed and empty."""
        while True:
            if self._abort.is_set():
                return None
            now = time.monotonic()
            batch = self._buffer.take(now)
            if batch is not None:
                return batch
            if self._closed and self._buffer.queued == 0:
                return None
            due = self._buffer.next_due()
            self._work.wait(None if due is None else max(0.001, due - now))

    def _deliver(self, batch: Batch) -> Delivery:
        delivery = Delivery(batch, self._policy, time.monotonic(), self.options.gzip_min_bytes, self._report.rng)
        while (request := delivery.request()) is not None:
            body, headers = request
            try:
                response = self._http.post(delivery.path, content=body, headers=headers)
                delay = delivery.answered(response.status_code, response.headers, response.content, time.monotonic())
            except httpx.TransportError as exc:
                delay = delivery.failed(f"{type(exc).__name__}: {exc}", time.monotonic())
            if delay > 0 and self._abort.wait(delay):
                delivery.abandon("closed")
        return delivery

    def _finish(self, batch: Batch, delivery: Delivery) -> None:
        with self._lock:
            self._buffer.finish(batch)
            self._stats.accepted += len(delivery.accepted)
            self._stats.dropped += sum(len(d.ids) for d in delivery.dropped)
            self._stats.requests += delivery.attempts
            self._stats.retries += delivery.retries
            self._room.notify_all()
            self._work.notify()
        if delivery.accepted:
            self._report.accepted(
                Accepted(
                    [item.id for item in delivery.accepted],
                    [item.captured_at for item in delivery.accepted],
                    time.monotonic(),
                )
            )
        for dropped in delivery.dropped:
            self._report.dropped(dropped)

    # --- flush, close, read-your-own-write ------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Send everything captured so far now; wait until it is accepted or given up. False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            target = self._buffer.request_flush()
            self._work.notify_all()
            while not self._buffer.finished_upto(target):
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                if not any(thread.is_alive() for thread in self._senders):
                    return False
                self._room.wait(remaining if remaining is not None else 1.0)
        return True

    def close(self, timeout: float | None = None) -> bool:
        """Flush and stop. Whatever is still unsent after ``timeout`` (default ``exit_timeout``) is given
        up and reported (``on_drop``, reason ``closed``). True when everything was delivered."""
        timeout = self.options.exit_timeout if timeout is None else timeout
        with self._lock:
            if self._closed:
                return True
            self._closed = True
            self._buffer.close()
            self._work.notify_all()
            self._room.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._senders:
            thread.join(max(0.0, deadline - time.monotonic()))
        complete = not any(thread.is_alive() for thread in self._senders)
        if not complete:
            self._abort.set()  # senders give up their retries and stop taking batches
            with self._lock:
                self._work.notify_all()
            for thread in self._senders:
                thread.join(self.options.timeout + 1)
        with self._lock:
            left = self._buffer.unfinished()
        for batch in left:
            with self._lock:
                self._stats.dropped += len(batch.items)
            self._report.dropped(Dropped("closed", batch.ids, None, f"not delivered within {timeout}s of close"))
        self._http.close()
        atexit.unregister(self._at_exit)
        return complete and not left

    def _at_exit(self) -> None:
        self.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def stats(self) -> Stats:
        with self._lock:
            stats = Stats(**vars(self._stats))
            stats.buffered = self._buffer.writes
        return stats

    def wait_applied(self, ids: Iterable[str], timeout: float = 10.0) -> dict[str, WriteStatus]:
        """Read-your-own-write: flush, then wait until each write is applied or rejected, or
        ``timeout`` passes (its status is then ``pending``). Answers the status of every id."""
        deadline = time.monotonic() + timeout
        self.flush(timeout)
        return {write_id: self._wait_one(write_id, deadline) for write_id in ids}

    def _wait_one(self, write_id: str, deadline: float) -> WriteStatus:
        status = WriteStatus(write_id, "pending")
        attempt = 0
        while True:
            remaining = deadline - time.monotonic()
            try:
                response = self._http.get(status_path(write_id, remaining), timeout=max(remaining, 0) + 5)
                if response.status_code == 200:
                    status = WriteStatus.from_json(response.json())
                    if status.status != "pending":
                        return status
                elif response.status_code not in (429, 502, 503, 504):
                    return WriteStatus(write_id, "unknown", reason=f"HTTP {response.status_code}")
                else:
                    time.sleep(min(self._policy.delay(attempt, None, self._report.rng), max(0.0, remaining)))
                    attempt += 1
            except httpx.TransportError:
                time.sleep(min(self._policy.delay(attempt, None, self._report.rng), max(0.0, remaining)))
                attempt += 1
            if time.monotonic() >= deadline:
                return status
