"""The pieces fault tests are built from: a real API server, a steady load of posted writes, a private
RabbitMQ node, and the final count (every write answered 202 applied exactly once)."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import OperationalError, connections

from tests.conftest import TenantHandle
from tests.stack import ROOT, stack_environment
from writes.management.commands.serve_api import api_command, api_environment
from writes.models import RejectedWrite, WriteLog

RESULTS_DIR = ROOT / "var" / "faults"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not true after {timeout}s")
        time.sleep(interval)


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


class ApiServer:
    """The API (``serve_api``'s uvicorn command) against the test databases, in its own process group."""

    def __init__(self, *, environment: dict[str, str] | None = None, workers: int = 2) -> None:
        self.port = free_port()
        self.log_path = ROOT / "var" / f"api-faults-{os.getpid()}.log"
        self._log = self.log_path.open("a")
        env = {
            **stack_environment(),
            # A crash of an API process leaves the Python stacks of all its threads in the log.
            "PYTHONFAULTHANDLER": "1",
            **(environment or {}),
        }
        command = api_command(host="127.0.0.1", port=self.port, processes=workers)
        env["PROMETHEUS_MULTIPROC_DIR"] = str(ROOT / "var" / "metrics" / f"api-faults-{self.port}")
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=api_environment(self.port, env),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_until(self._answers, timeout=60, what="API server up")
        wait_until(lambda: len(self.worker_pids()) == workers, timeout=30, what="API workers up")

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"the API exited:\n{self.log_path.read_text()[-3000:]}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            connection.request("GET", "/healthz")
            return connection.getresponse().status == 200
        except OSError:
            return False

    def worker_pids(self) -> list[int]:
        """The serving processes (uvicorn spawns them; its resource tracker is not one)."""
        return [pid for pid in children_of(self.process.pid) if b"spawn_main" in _cmdline(pid)]

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self._log.close()


@dataclass
class Response:
    at: float  # monotonic time the answer arrived
    status: int  # 0: no HTTP answer (connection refused or reset)
    retry_after: str | None


@dataclass
class LoadResult:
    accepted: dict[uuid.UUID, list[str]] = field(default_factory=dict)  # tenant → ids answered 202
    responses: list[Response] = field(default_factory=list)

    @property
    def accepted_count(self) -> int:
        return sum(len(ids) for ids in self.accepted.values())

    def statuses(self) -> Counter[int]:
        return Counter(r.status for r in self.responses)


class Load:
    """Threads posting event batches with client-chosen ids to the API, round robin over the tenants."""

    def __init__(self, port: int, tenants: list[TenantHandle], *, threads: int = 4, batch: int = 100) -> None:
        self.port = port
        self.tenants = tenants
        self.batch = batch
        self.result = LoadResult(accepted={t.tenant.id: [] for t in tenants})
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(threads)]
        for thread in self._threads:
            thread.start()

    def _run(self, number: int) -> None:
        connection: http.client.HTTPConnection | None = None
        sent = number
        while not self._stop.is_set():
            tenant = self.tenants[sent % len(self.tenants)]
            sent += 1
            ids = [str(uuid.uuid4()) for _ in range(self.batch)]
            body = json.dumps({"batch": [{"id": i, "name": f"load-{n % 5}", "properties": {"n": n}} for n, i in
                                         enumerate(ids)]})  # fmt: skip
            headers = {"Authorization": f"Bearer {tenant.api_key}", "Content-Type": "application/json"}
            try:
                if connection is None:
                    connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
                connection.request("POST", "/api/v1/events", body=body, headers=headers)
                answer = connection.getresponse()
                answer.read()
                status, retry_after = answer.status, answer.getheader("Retry-After")
            except (OSError, http.client.HTTPException):
                status, retry_after = 0, None
                if connection is not None:
                    connection.close()
                connection = None
            with self._lock:
                self.result.responses.append(Response(time.monotonic(), status, retry_after))
                if status == 202:
                    self.result.accepted[tenant.tenant.id].extend(ids)
            if status != 202:
                time.sleep(0.05)  # what a client honouring Retry-After would do, shortened

    def accepted_count(self) -> int:
        with self._lock:
            return self.result.accepted_count

    def wait_for_accepted(self, count: int, *, timeout: float = 60) -> None:
        wait_until(lambda: self.accepted_count() >= count, timeout=timeout, what=f"{count} writes accepted")

    def stop(self) -> LoadResult:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        return self.result


def applied_count(tenants: list[TenantHandle], *, attempts: int = 10) -> int:
    for attempt in range(attempts):
        try:
            total = 0
            for tenant in tenants:
                connections[tenant.shard].close_if_unusable_or_obsolete()
                total += WriteLog.objects.using(tenant.shard).filter(tenant_id=tenant.tenant.id).count()
            return total
        except OperationalError:  # e.g. "too many clients" on a shared server: ask again
            if attempt == attempts - 1:
                raise
            time.sleep(1)
    raise AssertionError("unreachable")


def in_flight(load: Load, tenants: list[TenantHandle]) -> int:
    """Writes answered 202 and not applied yet: what a fault at this moment puts at risk."""
    return max(0, load.accepted_count() - applied_count(tenants))


@dataclass
class Outcome:
    fault: str
    accepted: int
    applied: int
    rejected: int
    lost: int
    duplicated: int
    in_flight_at_fault: int
    statuses: dict[str, int]
    extra: dict[str, Any]

    def write(self) -> None:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        (RESULTS_DIR / f"{self.fault}.json").write_text(json.dumps(self.__dict__, indent=2, default=str))


def count_outcome(
    fault: str,
    tenants: list[TenantHandle],
    result: LoadResult,
    *,
    in_flight_at_fault: int,
    timeout: float = 120,
    extra: dict[str, Any] | None = None,
) -> Outcome:
    """Wait until every accepted write is applied or rejected, then count losses and duplicates."""
    by_tenant = {t.tenant.id: t for t in tenants}

    def settled() -> tuple[int, int, int]:
        applied = rejected = duplicated = 0
        for tenant_id, ids in result.accepted.items():
            shard = by_tenant[tenant_id].shard
            connections[shard].close_if_unusable_or_obsolete()
            rows = WriteLog.objects.using(shard).filter(tenant_id=tenant_id, write_id__in=ids)
            applied_ids = list(rows.values_list("write_id", flat=True))
            applied += len(set(applied_ids))
            duplicated += len(applied_ids) - len(set(applied_ids))
            rejected += RejectedWrite.objects.using(shard).filter(tenant_id=tenant_id, write_id__in=ids).count()
        return applied, rejected, duplicated

    deadline = time.monotonic() + timeout
    while True:
        try:
            applied, rejected, duplicated = settled()
        except OperationalError:  # e.g. "too many clients" on a shared server: ask again
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
            continue
        if applied + rejected >= result.accepted_count or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    # Everything this tenant has on its shard, accepted or not, appears once per id.
    for tenant in tenants:
        rows = WriteLog.objects.using(tenant.shard).filter(tenant_id=tenant.tenant.id)
        duplicated += rows.count() - rows.values("write_id").distinct().count()
    outcome = Outcome(
        fault=fault,
        accepted=result.accepted_count,
        applied=applied,
        rejected=rejected,
        lost=result.accepted_count - applied - rejected,
        duplicated=duplicated,
        in_flight_at_fault=in_flight_at_fault,
        statuses={str(k): v for k, v in sorted(result.statuses().items())},
        extra=extra or {},
    )
    outcome.write()
    return outcome


class PrivateRabbit:
    """A RabbitMQ node of the test's own (own ports, data and logs), to stop and start at will."""

    def __init__(self) -> None:
        self.port, self.dist_port = free_port(), free_port()
        self.node = f"faults-{os.getpid()}-{self.port}@localhost"
        self.base = Path(tempfile.mkdtemp(prefix="faults-rabbit-"))
        (self.base / "mnesia").mkdir()
        (self.base / "log").mkdir()
        (self.base / "enabled_plugins").write_text("[].\n")
        (self.base / "rabbitmq.conf").write_text(f"listeners.tcp.default = 127.0.0.1:{self.port}\n")
        (self.base / "rabbitmq-env.conf").write_text("")
        # rabbitmq-server started as root drops to the rabbitmq user, which must own its directories.
        if os.geteuid() == 0:
            with contextlib.suppress(KeyError):
                user = pwd.getpwnam("rabbitmq")
                for path in [self.base, *self.base.rglob("*")]:
                    os.chown(path, user.pw_uid, user.pw_gid)
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}//"
        self.process: subprocess.Popen[bytes] | None = None
        self.opened_at = 0.0
        self.hard_stops = 0

    def environment(self) -> dict[str, str]:
        return {
            **os.environ,
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.base / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(self.base / "rabbitmq.conf"),
            "RABBITMQ_CONF_ENV_FILE": str(self.base / "rabbitmq-env.conf"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def start(self, *, timeout: float = 120) -> None:
        log = (self.base / "server.out").open("ab")
        self.process = subprocess.Popen(
            ["rabbitmq-server"], env=self.environment(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        wait_until(self.answers, timeout=timeout, what="private RabbitMQ up", interval=0.25)
        self.opened_at = time.monotonic()
        time.sleep(1)  # the port opens a moment before logins are accepted

    def node_pids(self) -> list[int]:
        """The node's Erlang VM: su starts it in a session of its own, so it is found by its node name."""
        marker = f"RABBITMQ_NODENAME={self.node}".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    if (
                        marker in (entry / "environ").read_bytes().split(b"\0")
                        and b"beam" in (entry / "cmdline").read_bytes()
                    ):
                        found.append(int(entry.name))
        return found

    def stop(self) -> None:
        """SIGTERM (a clean shutdown); if the node still listens after 20 s, SIGKILL (a crash) instead."""
        if self.process is None:
            return
        for pid in self.node_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        try:
            wait_until(lambda: not self.answers() and not self.node_pids(), timeout=20, what="node stopped")
        except AssertionError:
            self.hard_stops += 1
            for pid in self.node_pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        wait_until(lambda: not self.answers() and not self.node_pids(), timeout=30, what="private RabbitMQ down")
        self.process = None

    def destroy(self) -> None:
        try:
            self.stop()
        finally:
            for pid in self.node_pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            shutil.rmtree(self.base, ignore_errors=True)


@contextlib.contextmanager
def shard_unavailable(alias: str) -> Iterator[None]:
    """No new connections to this (test) shard database, and its open ones terminated, until the block ends."""
    import psycopg

    name = connections[alias].settings_dict["NAME"]
    assert name.startswith("test_"), "only ever a test database"
    admin_url = os.environ.get("FAULTS_ADMIN_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", [name])
        connections[alias].close()
        try:
            yield
        finally:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')


def backends_mid_transaction(alias: str) -> int:
    """Worker connections to this shard that are inside a transaction right now (mid-batch)."""
    import psycopg

    name = connections[alias].settings_dict["NAME"]
    admin_url = os.environ.get("FAULTS_ADMIN_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    with psycopg.connect(admin_url, autocommit=True) as admin:
        row = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND xact_start IS NOT NULL "
            "AND pid <> pg_backend_pid() AND state <> 'idle'",
            [name],
        ).fetchone()
    return int(row[0]) if row else 0


def settings_prefix() -> str:
    return str(settings.WRITES_QUEUE_PREFIX)
