"""The client side of a fault test: threads posting events, chat messages, read marks and ledger transfers
to the API, and a history of every request (ids sent, status, error code, times) for the checker.

Every write carries a client id except read marks, which take the server's id; a refused request is
retried (some of them, up to three times) with the same ids, the server's ones taken from ``error.ids``.
Transfers debiting a ``no_overdraft`` account may be rejected (``insufficient_funds``) and say so in
``History.rejectable``.
"""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tests.conftest import TenantHandle

CURRENCY = "EUR"
#: (account, no_overdraft): money enters from ``equity`` (a plain account, it goes negative).
ACCOUNTS = (("equity", False), ("alice", True), ("bob", True), ("shop", False))
GUARDED = frozenset(name for name, guarded in ACCOUNTS if guarded)
CONVERSATIONS = ("room-0", "room-1", "room-2")
USERS = ("ann", "bob", "cid", "dee")
#: What a load thread posts, in turn.
ROUNDS = ("event", "message", "event", "transfer", "event", "message", "read")
RETRIED_STATUSES = frozenset({0, 429, 503})
MAX_ATTEMPTS = 4


@dataclass(slots=True)
class Attempt:
    """One HTTP request as the client saw it."""

    tenant_id: str
    kind: str
    ids: list[str]
    status: int  # 0: no HTTP answer (connection refused, reset or timed out)
    code: str | None  # the error body's code
    retry_after: str | None
    error_ids: list[str] | None  # the error body's ids
    started: float  # monotonic
    ended: float
    attempt: int  # 1 for the first try, 2… for retries with the same ids
    #: For a request of server-id writes: (kind, key, payload) as the log will hold it, so that a write
    #: from a request that got no answer (its ids unknown to the client) can still be recognised.
    fingerprint: tuple[str, str, str] | None = None

    @property
    def at(self) -> float:
        return self.ended


@dataclass
class History:
    """Every request of a run, and what the client knows about each write id."""

    attempts: list[Attempt] = field(default_factory=list)
    #: id → error codes under which a rejection of it is legitimate.
    rejectable: dict[str, frozenset[str]] = field(default_factory=dict)
    #: Writes that reached the queue without the API (the poison test's direct publishes): tenant → ids.
    published_directly: dict[str, list[str]] = field(default_factory=dict)
    #: Requests sent and not answered yet.
    on_the_wire: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, attempt: Attempt) -> None:
        with self.lock:
            self.attempts.append(attempt)

    def statuses(self) -> Counter[int]:
        with self.lock:
            return Counter(a.status for a in self.attempts)


def canonical(payload: Any) -> str:
    """A JSON value as one string, whatever its key order (to compare a request body with a log payload)."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"))


def _decode_error(raw: bytes) -> tuple[str | None, list[str] | None]:
    try:
        error = json.loads(raw).get("error") or {}
    except (ValueError, AttributeError):
        return None, None
    ids = error.get("ids")
    return error.get("code"), [str(i) for i in ids] if isinstance(ids, list) else None


class Client:
    """One keep-alive HTTP connection to the API that records every request in a history."""

    def __init__(self, port: int, history: History, *, timeout: float = 15) -> None:
        self.port = port
        self.history = history
        self.timeout = timeout
        self._connection: http.client.HTTPConnection | None = None

    def post(
        self,
        tenant: TenantHandle,
        path: str,
        body: Any,
        *,
        kind: str,
        ids: list[str],
        attempt: int = 1,
        fingerprint: tuple[str, str, str] | None = None,
    ) -> Attempt:
        headers = {"Authorization": f"Bearer {tenant.api_key}", "Content-Type": "application/json"}
        started = time.monotonic()
        code = retry_after = None
        error_ids = None
        with self.history.lock:
            self.history.on_the_wire += 1
        try:
            if self._connection is None:
                self._connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            self._connection.request("POST", path, body=json.dumps(body), headers=headers)
            answer = self._connection.getresponse()
            raw = answer.read()
            status, retry_after = answer.status, answer.getheader("Retry-After")
            if status >= 300:
                code, error_ids = _decode_error(raw)
            elif not ids and status == 202:  # server ids: learnt from the answer
                ids = [str(i) for i in json.loads(raw).get("ids", [])]
        except (OSError, http.client.HTTPException):
            status = 0
            self.close()
        finally:
            with self.history.lock:
                self.history.on_the_wire -= 1
        if not ids and error_ids:
            ids = list(error_ids)
        result = Attempt(
            str(tenant.tenant.id),
            kind,
            ids,
            status,
            code,
            retry_after,
            error_ids,
            started,
            time.monotonic(),
            attempt,
            fingerprint if not ids else None,
        )
        self.history.record(result)
        return result

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
        self._connection = None


def prepare_tenant(port: int, tenant: TenantHandle, history: History) -> None:
    """The ledger accounts the transfers use (created synchronously) and the conversations' members."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        for account_id, guarded in ACCOUNTS:
            body = {"id": account_id, "currency": CURRENCY, "no_overdraft": guarded}
            headers = {"Authorization": f"Bearer {tenant.api_key}", "Content-Type": "application/json"}
            connection.request("POST", "/api/v1/ledger/accounts", body=json.dumps(body), headers=headers)
            answer = connection.getresponse()
            answer.read()
            assert answer.status in (200, 201), (answer.status, account_id)
    finally:
        connection.close()
    # Members of every conversation, so that messages fan out to several inboxes from the start.
    client = Client(port, history)
    try:
        for conversation in CONVERSATIONS:
            write_id = str(uuid.uuid4())
            added = client.post(
                tenant,
                f"/api/v1/conversations/{conversation}/members",
                {"user_ids": list(USERS), "id": write_id},
                kind="member",
                ids=[write_id],
            )
            assert added.status == 202, added
    finally:
        client.close()


class Load:
    """Threads posting writes of every kind, round robin over the tenants, recording a ``History``."""

    def __init__(
        self,
        port: int,
        tenants: list[TenantHandle],
        *,
        threads: int = 4,
        batch: int = 100,
        history: History | None = None,
        seed: int = 1,
    ) -> None:
        self.port = port
        self.tenants = tenants
        self.batch = batch
        self.history = history or History()
        self._accepted: Counter[str] = Counter()  # tenant id → writes answered 202
        self._requests = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        for tenant in tenants:
            prepare_tenant(port, tenant, self.history)
        self._threads = [
            threading.Thread(target=self._run, args=(n, random.Random(seed * 1000 + n)), daemon=True)
            for n in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    # --- what is posted -------------------------------------------------------------------

    def _events(self, rng: random.Random) -> tuple[str, dict[str, Any], list[str]]:
        ids = [str(uuid.uuid4()) for _ in range(self.batch)]
        batch = [{"id": i, "name": f"load-{rng.randrange(5)}", "properties": {"n": n}} for n, i in enumerate(ids)]
        return "/api/v1/events", {"batch": batch}, ids

    def _messages(self, rng: random.Random) -> tuple[str, dict[str, Any], list[str]]:
        ids = [str(uuid.uuid4()) for _ in range(max(1, self.batch // 10))]
        batch = [{"id": i, "sender_id": rng.choice(USERS), "body": f"message {i[:8]}"} for i in ids]
        return f"/api/v1/conversations/{rng.choice(CONVERSATIONS)}/messages", {"batch": batch}, ids

    def _read_mark(self, rng: random.Random) -> tuple[str, dict[str, Any], list[str]]:
        # No id: the server assigns one; a retry sends it back (see ``_post_with_retries``).
        body = {"user_id": rng.choice(USERS), "up_to": rng.randrange(1, 200)}
        return f"/api/v1/conversations/{rng.choice(CONVERSATIONS)}/read", body, []

    def _transfers(self, rng: random.Random) -> tuple[str, dict[str, Any], list[str]]:
        batch: list[dict[str, Any]] = []
        ids: list[str] = []
        for _ in range(max(1, self.batch // 10)):
            if rng.random() < 0.4:
                debit, credit = "equity", rng.choice(sorted(GUARDED))
            else:
                debit = rng.choice(sorted(GUARDED))
                credit = rng.choice([a for a, _ in ACCOUNTS if a not in (debit, "equity")])
            transfer_id = str(uuid.uuid4())
            ids.append(transfer_id)
            if debit in GUARDED:
                with self.history.lock:
                    self.history.rejectable[transfer_id] = frozenset({"insufficient_funds"})
            batch.append(
                {
                    "id": transfer_id,
                    "debit_account": debit,
                    "credit_account": credit,
                    "amount": rng.randrange(1, 150),
                    "currency": CURRENCY,
                }
            )
        return "/api/v1/ledger/transfers", {"batch": batch}, ids

    # --- the threads ----------------------------------------------------------------------

    def _run(self, number: int, rng: random.Random) -> None:
        client = Client(self.port, self.history)
        makers = {
            "event": self._events,
            "message": self._messages,
            "read": self._read_mark,
            "transfer": self._transfers,
        }
        sent = number
        while not self._stop.is_set():
            tenant = self.tenants[sent % len(self.tenants)]
            kind = ROUNDS[(sent // len(self.tenants)) % len(ROUNDS)]
            sent += 1
            path, body, ids = makers[kind](rng)
            self._post_with_retries(client, tenant, kind, path, body, ids, rng)
        client.close()

    def _post_with_retries(
        self,
        client: Client,
        tenant: TenantHandle,
        kind: str,
        path: str,
        body: dict[str, Any],
        ids: list[str],
        rng: random.Random,
    ) -> None:
        with self._lock:
            self._requests += 1
            retry = self._requests % 2 == 0  # every other request is retried if refused; the rest give up
        fingerprint = None
        if not ids:  # server ids: what the log will hold, to recognise a write whose request got no answer
            fingerprint = (kind, path.split("/")[4], canonical(body))
        for attempt in range(1, MAX_ATTEMPTS + 1):
            answer = client.post(tenant, path, body, kind=kind, ids=ids, attempt=attempt, fingerprint=fingerprint)
            if answer.status == 202:
                with self._lock:
                    self._accepted[tenant.tenant.id.hex] += len(answer.ids)
                return
            if answer.status not in RETRIED_STATUSES or not retry or self._stop.is_set():
                time.sleep(0.05)
                return
            if not answer.ids:  # no answer and no ids of its own: sending it again would be a new write
                return
            if not ids and answer.ids and "id" not in body:  # a server id: send it back with the retry
                ids = answer.ids
                body = {**body, "id": ids[0]}
            time.sleep(0.05 + rng.random() * 0.1)  # what a client honouring Retry-After would do, shortened

    # --- progress -------------------------------------------------------------------------

    def accepted_count(self) -> int:
        with self._lock:
            return sum(self._accepted.values())

    def accepted_for(self, tenant: TenantHandle) -> int:
        with self._lock:
            return self._accepted[tenant.tenant.id.hex]

    def wait_for_accepted(self, count: int, *, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.accepted_count() < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{count} writes accepted: not true after {timeout}s; {self.progress()}")
            time.sleep(0.1)

    def progress(self) -> str:
        """What the client saw lately, for a failure message: answers of the last 10 s by kind, on the wire."""
        recent = time.monotonic() - 10
        with self.history.lock:
            lately = Counter(
                f"{a.kind} {a.status} {a.code or ''}".strip() for a in self.history.attempts if a.ended > recent
            )
            on_the_wire = self.history.on_the_wire
        return f"answers in the last 10 s: {dict(lately)}, requests on the wire: {on_the_wire}"

    def stop(self) -> History:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        return self.history
