"""The asyncio client: the same batching, gzip and retries as ``Client``, as tasks on the caller's loop.

Capture coroutines return at once unless the buffer is full and ``on_full="block"``. Sender tasks
start with the first capture. Close it with ``await client.close()`` or ``async with``; writes left
when the interpreter exits without that (the loop gone) are sent by a last synchronous delivery.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
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

RETRIED_STATUS_READS = (429, 502, 503, 504)


class AsyncClient:
    """A client of one API and one API key for asyncio code; use it from one event loop.

    >>> async with AsyncClient("http://127.0.0.1:8000", "wk_...") as client:
    ...     write_id = await client.capture_event("signup", distinct_id="user-42")
    ...     statuses = await client.wait_applied([write_id], timeout=5)
    """

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        **options: Unpack[OptionArgs],
    ) -> None:
        self.options = Options(**options)
        self._url = url
        self._headers = base_headers(api_key)
        self._http = httpx.AsyncClient(
            base_url=url,
            headers=self._headers,
            timeout=self.options.timeout,
            transport=transport,
            limits=httpx.Limits(max_connections=self.options.senders + 4),
        )
        self._buffer = self.options.buffer()
        self._policy = self.options.retry_policy()
        self._report = Reporter(self.options)
        self._wake = asyncio.Event()  # a batch may be due: senders look
        self._progress = asyncio.Event()  # a batch finished: room for producers, progress for flushes
        self._abort = asyncio.Event()  # close() ran out of time: stop retrying
        self._stats = Stats()
        self._closed = False
        self._senders: list[asyncio.Task[None]] = []
        atexit.register(self._at_exit)

    # --- capture --------------------------------------------------------------------------------

    async def capture_event(
        self,
        name: str,
        *,
        distinct_id: str | None = None,
        properties: dict[str, Any] | None = None,
        timestamp: datetime | str | None = None,
        id: str | uuid.UUID | None = None,
    ) -> str:
        """Queue an analytics event; answers its id. ``timestamp`` defaults to now."""
        return await self._capture(
            id,
            lambda write_id: event_write(
                name=name, distinct_id=distinct_id, properties=properties, timestamp=timestamp, write_id=write_id
            ),
        )

    async def send_message(
        self,
        conversation_id: str,
        *,
        sender_id: str,
        body: str,
        sent_at: datetime | str | None = None,
        id: str | uuid.UUID | None = None,
    ) -> str:
        """Queue a chat message; messages of one conversation are sent in the order captured."""
        return await self._capture(
            id,
            lambda write_id: message_write(
                conversation_id=conversation_id, sender_id=sender_id, body=body, sent_at=sent_at, write_id=write_id
            ),
        )

    async def transfer(
        self,
        *,
        debit_account: str,
        credit_account: str,
        amount: int,
        currency: str,
        metadata: dict[str, Any] | None = None,
        id: str | uuid.UUID | None = None,
    ) -> str:
        """Queue a ledger transfer (``amount`` in minor units); transfers are sent in the order captured."""
        return await self._capture(
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

    async def capture(self, item: Item) -> str:
        return await self._capture(item.id, lambda _: item)

    async def _capture(self, given: str | uuid.UUID | None, build: Callable[[str], Item]) -> str:
        write_id = str(given) if given is not None else new_write_id()
        try:
            item = build(write_id)
            write_id = item.id  # in its canonical form
        except InvalidWrite as exc:
            return self._refuse("invalid", write_id, exc)
        if self._closed:
            return self._refuse("closed", write_id, ClientClosed("the client is closed"))
        self._start()
        if not self._buffer.has_room(len(item.data)) and not await self._wait_for_room(len(item.data)):
            return self._refuse("buffer_full", write_id, BufferFull(f"{self._buffer.writes} writes buffered"))
        self._stats.captured += 1
        if self._buffer.add(item):
            self._wake.set()
        return write_id

    async def _wait_for_room(self, nbytes: int) -> bool:
        if self.options.on_full != "block":
            return False
        deadline = time.monotonic() + self.options.block_timeout
        while not self._buffer.has_room(nbytes):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._closed:
                return False
            self._progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._progress.wait(), remaining)
        return True

    def _refuse(self, reason: str, write_id: str, exc: Exception) -> str:
        self._stats.dropped += 1
        self._report.dropped(Dropped(reason, [write_id], None, str(exc)))
        if self.options.raise_errors:
            raise exc
        return write_id

    # --- sending --------------------------------------------------------------------------------

    def _start(self) -> None:
        if not self._senders:
            self._senders = [asyncio.create_task(self._send_loop()) for _ in range(self.options.senders)]

    async def _send_loop(self) -> None:
        while (batch := await self._next_batch()) is not None:
            try:
                delivery = await self._deliver(batch)
            except Exception:
                logger.exception("delivering a batch failed")
                delivery = Delivery(batch, self._policy, time.monotonic())
                delivery.abandon("refused")
            self._finish(batch, delivery)

    async def _next_batch(self) -> Batch | None:
        while not self._abort.is_set():
            now = time.monotonic()
            batch = self._buffer.take(now)
            if batch is not None:
                return batch
            if self._closed and self._buffer.queued == 0:
                return None
            due = self._buffer.next_due()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), None if due is None else max(0.001, due - now))
        return None

    async def _deliver(self, batch: Batch) -> Delivery:
        delivery = Delivery(batch, self._policy, time.monotonic(), self.options.gzip_min_bytes, self._report.rng)
        while (request := delivery.request()) is not None:
            body, headers = request
            try:
                response = await self._http.post(delivery.path, content=body, headers=headers)
                delay = delivery.answered(response.status_code, response.headers, response.content, time.monotonic())
            except httpx.TransportError as exc:
                delay = delivery.failed(f"{type(exc).__name__}: {exc}", time.monotonic())
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._abort.wait(), delay)
                if self._abort.is_set():
                    delivery.abandon("closed")
        return delivery

    def _finish(self, batch: Batch, delivery: Delivery) -> None:
        self._buffer.finish(batch)
        self._stats.accepted += len(delivery.accepted)
        self._stats.dropped += sum(len(d.ids) for d in delivery.dropped)
        self._stats.requests += delivery.attempts
        self._stats.retries += delivery.retries
        self._progress.set()
        self._wake.set()
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

    async def flush(self, timeout: float | None = None) -> bool:
        """Send everything captured so far now; wait until it is accepted or given up. False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        target = self._buffer.request_flush()
        self._wake.set()
        while not self._buffer.finished_upto(target):
            if not self._senders or all(task.done() for task in self._senders):
                return False
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            self._progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._progress.wait(), remaining)
        return True

    async def close(self, timeout: float | None = None) -> bool:
        """Flush and stop; what is unsent after ``timeout`` (default ``exit_timeout``) is given up and
        reported (``on_drop``, reason ``closed``). True when everything was delivered."""
        if self._closed:
            return True
        timeout = self.options.exit_timeout if timeout is None else timeout
        self._closed = True
        self._buffer.close()
        self._wake.set()
        self._progress.set()
        complete = True
        if self._senders:
            _, pending = await asyncio.wait(self._senders, timeout=timeout)
            if pending:
                complete = False
                self._abort.set()
                await asyncio.wait(pending, timeout=self.options.timeout + 1)
                for task in pending:
                    task.cancel()
        left = self._buffer.unfinished()
        for batch in left:
            self._stats.dropped += len(batch.items)
            self._report.dropped(Dropped("closed", batch.ids, None, f"not delivered within {timeout}s of close"))
        await self._http.aclose()
        atexit.unregister(self._at_exit)
        return complete and not left

    def _at_exit(self) -> None:
        """The loop is gone without ``close()``: deliver what is left (in flight included: the same ids
        again are harmless) with a synchronous client, within ``exit_timeout``."""
        if self._closed:
            return
        self._closed = True
        left = self._buffer.unfinished()
        if not left:
            return
        deadline = time.monotonic() + self.options.exit_timeout
        with httpx.Client(base_url=self._url, headers=self._headers, timeout=self.options.timeout) as http:
            for batch in left:
                delivery = Delivery(batch, self._policy, time.monotonic(), self.options.gzip_min_bytes)
                while (request := delivery.request()) is not None:
                    try:
                        response = http.post(delivery.path, content=request[0], headers=request[1])
                        delay = delivery.answered(
                            response.status_code, response.headers, response.content, time.monotonic()
                        )
                    except httpx.TransportError as exc:
                        delay = delivery.failed(str(exc), time.monotonic())
                    if time.monotonic() + delay > deadline:
                        delivery.abandon("closed")
                    else:
                        time.sleep(delay)
                self._stats.accepted += len(delivery.accepted)
                for dropped in delivery.dropped:
                    self._report.dropped(dropped)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.close()

    def stats(self) -> Stats:
        stats = Stats(**vars(self._stats))
        stats.buffered = self._buffer.writes
        return stats

    async def wait_applied(
        self, ids: Iterable[str], timeout: float = 10.0, *, concurrency: int = 8
    ) -> dict[str, WriteStatus]:
        """Read-your-own-write: flush, then wait until each write is applied or rejected, or ``timeout``
        passes (its status is then ``pending``). At most ``concurrency`` long-polls at once."""
        deadline = time.monotonic() + timeout
        await self.flush(timeout)
        slots = asyncio.Semaphore(concurrency)

        async def one(write_id: str) -> WriteStatus:
            async with slots:
                return await self._wait_one(write_id, deadline)

        ids = list(ids)
        statuses = await asyncio.gather(*(one(write_id) for write_id in ids))
        return dict(zip(ids, statuses, strict=True))

    async def _wait_one(self, write_id: str, deadline: float) -> WriteStatus:
        status = WriteStatus(write_id, "pending")
        attempt = 0
        while True:
            remaining = deadline - time.monotonic()
            try:
                response = await self._http.get(status_path(write_id, remaining), timeout=max(remaining, 0) + 5)
                if response.status_code == 200:
                    status = WriteStatus.from_json(response.json())
                    if status.status != "pending":
                        return status
                elif response.status_code not in RETRIED_STATUS_READS:
                    return WriteStatus(write_id, "unknown", reason=f"HTTP {response.status_code}")
                else:
                    await asyncio.sleep(min(self._policy.delay(attempt, None, self._report.rng), max(0.0, remaining)))
                    attempt += 1
            except httpx.TransportError:
                await asyncio.sleep(min(self._policy.delay(attempt, None, self._report.rng), max(0.0, remaining)))
                attempt += 1
            if time.monotonic() >= deadline:
                return status
