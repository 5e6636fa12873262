"""The pieces fault tests are built from: a real API server, a private RabbitMQ node, a shard made
unreachable, the evidence that a fault struck where it claims, and each run's result file."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from django.db import OperationalError, connections

from tests.conftest import TenantHandle
from tests.faults.checker import Verdict
from tests.faults.load import Attempt, History, Load
from tests.stack import ROOT, stack_environment
from writes.management.commands.serve_api import api_command, api_environment
from writes.models import WriteLog

RESULTS_DIR = ROOT / "var" / "faults"
ADMIN_URL = os.environ.get("FAULTS_ADMIN_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
#: The figures every ``var/faults/<fault>.json`` starts with (the README's table shows them).
RESULT_FIGURES = (
    "accepted",
    "applied",
    "legitimately_rejected",
    "lost",
    "duplicated",
    "wrongly_rejected",
    "refused_then_applied",
    "read_model_mismatches",
    "ledger_invariant_violations",
    "applied_never_sent",
)


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
        self.log_path.parent.mkdir(parents=True, exist_ok=True)  # a fresh clone has no var/ yet
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


def write_result(
    fault: str, verdict: Verdict, *, in_flight_at_fault: int, evidence: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``var/faults/<fault>.json``: the checker's figures first, then how the fault struck."""
    headline = {name: getattr(verdict, name) for name in RESULT_FIGURES}
    result = {
        "fault": fault,
        **headline,
        "in_flight_at_fault": in_flight_at_fault,
        "evidence": evidence or {},
        "verdict": verdict.as_dict(),
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"{fault}.json").write_text(json.dumps(result, indent=2, default=str))
    return result


def requests_cut(history: History, moment: float) -> list[Attempt]:
    """Requests that were on the wire at ``moment`` and never got an answer."""
    with history.lock:
        return [a for a in history.attempts if a.status == 0 and a.started <= moment <= a.ended]


class BatchWatch:
    """Spots a worker inside an open transaction on a shard, from ``pg_stat_activity``, over one
    connection kept open so that the gap between seeing it and killing the worker stays small."""

    _OPEN_TRANSACTION = """
        SELECT pid, application_name, state, extract(epoch FROM now() - xact_start) * 1000, left(query, 160)
        FROM pg_stat_activity
        WHERE datname = %s AND backend_type = 'client backend' AND application_name = ANY(%s)
          AND xact_start IS NOT NULL AND state IN ('active', 'idle in transaction')
          AND query NOT ILIKE 'commit%%'
        LIMIT 1
    """

    def __init__(self) -> None:
        import psycopg

        self._connection = psycopg.connect(ADMIN_URL, autocommit=True)

    def open_transaction(self, alias: str, applications: list[str]) -> dict[str, Any] | None:
        name = connections[alias].settings_dict["NAME"]
        row = self._connection.execute(self._OPEN_TRANSACTION, [name, applications]).fetchone()
        if row is None:
            return None
        seen_at = time.monotonic()
        pid, application, state, age_ms, query = row
        return {
            "seen_at": seen_at,
            "shard": alias,
            "backend_pid": pid,
            "application_name": application,
            "state": state,
            "transaction_age_ms": round(float(age_ms), 1),
            "query": query,
        }

    def backend_gone(self, pid: int) -> bool:
        row = self._connection.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone()
        return row is not None and int(row[0]) == 0

    def close(self) -> None:
        self._connection.close()


#: How the applier names its open transaction (``writes.apply``): ``apply <shard> messages=N writes=W <kinds>``.
_APPLY_TAG = re.compile(r"^apply (?P<shard>\S+) messages=(?P<messages>\d+) writes=(?P<writes>\d+) ?(?P<kinds>\S*)")


class MultiMessageWatch:
    """Spots a worker inside an apply transaction of several messages, and reads back from the shard's
    own pages what that transaction had written before it was killed.

    The applier renames its session for the length of the transaction, right after claiming its messages
    in ``publish_fates``: ``apply <shard> messages=N writes=W <kinds>``. What the name says is only what
    the worker meant to do; the proof is in the heap. Every row a transaction inserts carries its id as
    ``xmin``, committed or not, aborted or not, until vacuum takes it away: ``pageinspect`` lists the
    ``publish_fates`` rows whose ``xmin`` is the killed transaction's id, i.e. the messages it had
    claimed, and ``pg_xact_status`` says whether that transaction committed or was aborted.

    One connection per shard database, kept open so that the gap between seeing the transaction and
    killing its worker stays small.
    """

    _OPEN_APPLY = """
        SELECT pid, backend_xid::text, application_name, state,
               extract(epoch FROM now() - xact_start) * 1000, left(query, 160)
        FROM pg_stat_activity
        WHERE datname = current_database() AND backend_type = 'client backend'
          AND xact_start IS NOT NULL AND backend_xid IS NOT NULL AND application_name LIKE 'apply %%'
          AND state IN ('active', 'idle in transaction') AND query NOT ILIKE 'commit%%'
    """

    # Every tuple of the table, live or dead, with its inserting transaction and its columns as bytes.
    _INSERTED_BY = """
        SELECT item.t_attrs[1]
        FROM generate_series(
            0, (pg_relation_size(%(table)s::regclass) / current_setting('block_size')::int)::int - 1
        ) blk,
             LATERAL heap_page_item_attrs(get_raw_page(%(table)s::text, blk), %(table)s::regclass) item
        WHERE item.t_xmin = %(xid)s::text::xid AND item.t_attrs IS NOT NULL
    """

    # Row versions the transaction wrote or locked (``FOR UPDATE`` leaves its id in ``xmax``).
    _TOUCHED_BY = """
        SELECT count(*)
        FROM generate_series(
            0, (pg_relation_size(%(table)s::regclass) / current_setting('block_size')::int)::int - 1
        ) blk,
             LATERAL heap_page_items(get_raw_page(%(table)s::text, blk)) item
        WHERE item.t_xmin = %(xid)s::text::xid OR item.t_xmax = %(xid)s::text::xid
    """

    # ``backend_xid`` is the 32-bit id: widened with the current epoch for ``pg_xact_status``.
    _STATUS = """
        SELECT pg_xact_status(
            (((pg_snapshot_xmax(pg_current_snapshot())::text::bigint >> 32) << 32) + %s)::text::xid8)
    """

    def __init__(self, aliases: list[str]) -> None:
        import psycopg

        self.aliases = list(aliases)
        # The admin role (``pageinspect`` wants a superuser), on each shard's test database.
        self._connections = {
            alias: psycopg.connect(ADMIN_URL, dbname=connections[alias].settings_dict["NAME"], autocommit=True)
            for alias in aliases
        }
        for connection in self._connections.values():
            connection.execute("CREATE EXTENSION IF NOT EXISTS pageinspect")

    def multi_message_apply(self, *, at_least: int = 2) -> dict[str, Any] | None:
        """An open apply transaction of ``at_least`` messages or more, on any shard, if there is one now."""
        for alias in self.aliases:
            for pid, xid, name, state, age_ms, query in self._connections[alias].execute(self._OPEN_APPLY):
                tag = _APPLY_TAG.match(str(name))
                if tag is None or int(tag["messages"]) < at_least:
                    continue
                return {
                    "seen_at": time.monotonic(),
                    "shard": alias,
                    "backend_pid": int(pid),
                    "xid": int(xid),
                    "application_name": name,
                    "messages_named": int(tag["messages"]),
                    "writes_named": int(tag["writes"]),
                    "kinds_named": tag["kinds"],
                    "state": state,
                    "transaction_age_ms": round(float(age_ms), 1),
                    "query": query,
                }
        return None

    def claimed_by(self, alias: str, xid: int) -> list[str]:
        """The message ids the transaction ``xid`` inserted into ``publish_fates`` (its claims)."""
        rows = self._connections[alias].execute(self._INSERTED_BY, {"table": "publish_fates", "xid": xid})
        return sorted(str(uuid.UUID(bytes=bytes(raw))) for (raw,) in rows)

    def rows_touched_by(self, alias: str, table: str, xid: int) -> int:
        """Row versions of ``table`` the transaction ``xid`` wrote or locked."""
        row = self._connections[alias].execute(self._TOUCHED_BY, {"table": table, "xid": xid}).fetchone()
        return int(row[0]) if row else 0

    def status(self, alias: str, xid: int) -> str:
        """``committed``, ``aborted`` or ``in progress``."""
        row = self._connections[alias].execute(self._STATUS, [xid]).fetchone()
        return str(row[0]) if row else "unknown"

    def backend_gone(self, alias: str, pid: int) -> bool:
        found = self._connections[alias].execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [pid])
        row = found.fetchone()
        return row is not None and int(row[0]) == 0

    def fates(self, alias: str, message_ids: list[str]) -> dict[str, int]:
        """How many of these messages ``publish_fates`` now holds, by fate (as committed since)."""
        rows = self._connections[alias].execute(
            "SELECT fate, count(*) FROM publish_fates WHERE message_id = ANY(%s::uuid[]) GROUP BY fate",
            [message_ids],
        )
        return {str(fate): int(count) for fate, count in rows}

    def close(self) -> None:
        for connection in self._connections.values():
            connection.close()


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
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", [name])
        connections[alias].close()
        try:
            yield
        finally:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            connections[alias].close()  # whatever the test opened meanwhile was refused or terminated


def rabbitmqctl(node: str, *args: str, timeout: float = 60) -> str:
    """``rabbitmqctl -n node ...`` (the Debian wrapper runs it as the rabbitmq user, whose Erlang cookie
    every private node shares, since they run as that user too)."""
    result = subprocess.run(
        ["rabbitmqctl", "-q", "-n", node, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"rabbitmqctl -n {node} {' '.join(args)}: {result.stdout}{result.stderr}")
    return result.stdout


class RabbitCluster:
    """Three private RabbitMQ nodes joined into one cluster (``join_cluster``): own node names, ports and
    data directories. ``url`` lists every node, ``;``-separated, as ``CELERY_BROKER_URL`` takes it."""

    def __init__(self, size: int = 3) -> None:
        self.nodes = [PrivateRabbit() for _ in range(size)]
        self.url = ";".join(node.url for node in self.nodes)
        self.kills: list[dict[str, Any]] = []

    def start(self) -> None:
        import concurrent.futures

        with concurrent.futures.ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(lambda node: node.start(), self.nodes))
        first = self.nodes[0].node
        for node in self.nodes[1:]:
            rabbitmqctl(node.node, "stop_app")
            rabbitmqctl(node.node, "join_cluster", first)
            rabbitmqctl(node.node, "start_app")
        wait_until(lambda: len(self.running_nodes()) == len(self.nodes), timeout=60, what="cluster formed")

    def running(self) -> list[PrivateRabbit]:
        return [node for node in self.nodes if node.process is not None]

    def running_nodes(self) -> list[str]:
        """Node names the cluster reports running, asked of a node that is up."""
        for node in self.running():
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                status = json.loads(rabbitmqctl(node.node, "cluster_status", "--formatter", "json", timeout=20))
                return sorted(status.get("running_nodes", []))
        return []

    def queue_leaders(self, prefix: str) -> dict[str, str]:
        """Quorum queue name → the node leading it, for this test's queues."""
        for node in self.running():
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                rows = json.loads(
                    rabbitmqctl(node.node, "list_queues", "name", "leader", "--formatter", "json", timeout=20)
                )
                return {row["name"]: row["leader"] for row in rows if row["name"].startswith(prefix)}
        return {}

    def node_named(self, name: str) -> PrivateRabbit:
        return next(node for node in self.nodes if node.node == name)

    def kill(self, node: PrivateRabbit) -> None:
        """SIGKILL the node's Erlang VM: a crash, not a shutdown."""
        for pid in node.node_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if node.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.process.pid, signal.SIGKILL)
            node.process.wait()
        wait_until(lambda: not node.answers() and not node.node_pids(), timeout=30, what="node killed")
        node.process = None

    def restart(self, node: PrivateRabbit) -> None:
        """Start a stopped or killed node again; it rejoins the cluster from its own data directory."""
        node.start()
        wait_until(lambda: node.node in self.running_nodes(), timeout=60, what=f"{node.node} rejoined")

    def destroy(self) -> None:
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.destroy()


POSTGRES_BIN = Path(os.environ.get("FAULTS_POSTGRES_BIN", "/usr/lib/postgresql/15/bin"))


def _as_postgres(command: list[str], **options: Any) -> subprocess.CompletedProcess[str]:
    """PostgreSQL's tools refuse to run as root: run them as the postgres user then."""
    if os.geteuid() == 0:
        command = ["runuser", "-u", "postgres", "--", *command]
    return subprocess.run(command, capture_output=True, text=True, check=True, **options)


class PrivatePostgres:
    """One PostgreSQL server of the test's own (own port, data directory and socket directory), made with
    the standard tools: ``initdb`` for a primary, ``pg_basebackup -R`` from a primary for a standby."""

    def __init__(self, base: Path, name: str) -> None:
        self.name = name
        self.port = free_port()
        self.data = base / name
        self.socket_dir = base / f"{name}-socket"
        self.socket_dir.mkdir()
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.socket_dir, user.pw_uid, user.pw_gid)
        self.log = base / f"{name}.log"

    @classmethod
    def primary(cls, base: Path, name: str, *, synchronous_standby: str) -> PrivatePostgres:
        server = cls(base, name)
        _as_postgres([str(POSTGRES_BIN / "initdb"), "-D", str(server.data), "-U", "postgres", "--auth=trust", "-N"])
        with (server.data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"\nport = {server.port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{server.socket_dir}'\n"
                "wal_level = replica\nmax_wal_senders = 5\nmax_connections = 100\nshared_buffers = 64MB\n"
                f"synchronous_standby_names = 'ANY 1 ({synchronous_standby})'\n"
                "synchronous_commit = on\n"
            )
        return server

    @classmethod
    def standby_of(cls, primary: PrivatePostgres, name: str) -> PrivatePostgres:
        server = cls(primary.data.parent, name)
        _as_postgres(
            [
                str(POSTGRES_BIN / "pg_basebackup"),
                *("-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres"),
                *("-D", str(server.data), "-R", "-X", "stream", "-c", "fast"),
            ],
            timeout=120,
        )
        with (server.data / "postgresql.conf").open("a") as conf:
            # cluster_name is the walreceiver's application_name: what synchronous_standby_names names.
            conf.write(
                f"\nport = {server.port}\nunix_socket_directories = '{server.socket_dir}'\n"
                f"cluster_name = '{name}'\nhot_standby = on\nsynchronous_standby_names = ''\n"
            )
        return server

    def start(self) -> None:
        _as_postgres(
            [str(POSTGRES_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "start"], timeout=60
        )

    def postmaster_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.data / "postmaster.pid").read_text().splitlines()[0])
        return None

    def kill(self) -> None:
        """SIGKILL the postmaster and every backend: the server is gone as if its machine died."""
        pid = self.postmaster_pid()
        if pid is None:
            return
        for victim in [pid, *children_of(pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
        wait_until(
            lambda: not Path(f"/proc/{pid}").exists() or b"(postgres) Z" in _stat(pid), timeout=10, what="killed"
        )

    def promote(self) -> None:
        _as_postgres([str(POSTGRES_BIN / "pg_ctl"), "-D", str(self.data), "-w", "promote"], timeout=60)

    def execute(self, sql: str) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", autocommit=True
        ) as c:
            cursor = c.execute(sql)
            return cursor.fetchall() if cursor.description else []

    def stop(self) -> None:
        pid = self.postmaster_pid()
        if pid is not None and Path(f"/proc/{pid}").exists():
            with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
                _as_postgres(
                    [str(POSTGRES_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"], timeout=30
                )
            self.kill()


def _stat(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return b""


class ReplicatedShard:
    """A primary and a synchronous streaming standby for one shard, in a temporary directory: a COMMIT
    on the primary returns once the standby has its WAL."""

    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="faults-postgres-"))
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.base, user.pw_uid, user.pw_gid)
        self.primary = PrivatePostgres.primary(self.base, "primary", synchronous_standby="standby")
        self.primary.start()
        self.standby = PrivatePostgres.standby_of(self.primary, "standby")
        self.standby.start()
        wait_until(self.standby_is_synchronous, timeout=30, what="the standby streams synchronously")

    def standby_is_synchronous(self) -> bool:
        rows = self.primary.execute("SELECT sync_state FROM pg_stat_replication WHERE application_name = 'standby'")
        return bool(rows) and rows[0][0] in ("sync", "quorum")

    def hosts(self) -> tuple[str, str]:
        """HOST and PORT of a Django database naming both servers, primary first."""
        return "127.0.0.1,127.0.0.1", f"{self.primary.port},{self.standby.port}"

    def destroy(self) -> None:
        for server in (self.standby, self.primary):
            with contextlib.suppress(Exception):
                server.stop()
        shutil.rmtree(self.base, ignore_errors=True)


@contextlib.contextmanager
def shard_served_by(alias: str, shard: ReplicatedShard) -> Iterator[None]:
    """Move a (test) shard alias onto a replicated shard for the block: the same database name, created
    and migrated on its primary; this process's connection and every child started meanwhile
    (``stack_environment``) name the primary and the standby, ``target_session_attrs=read-write``."""
    from django.core.management import call_command

    config = connections[alias].settings_dict  # the very dict every new connection of this alias reads
    name = config["NAME"]
    assert name.startswith("test_"), "only ever a test database"
    saved = {key: config.get(key) for key in ("HOST", "PORT", "OPTIONS")}
    _disconnect(alias)
    shard.primary.execute(f'CREATE DATABASE "{name}"')
    host, port = shard.hosts()
    config.update(HOST=host, PORT=port, OPTIONS={**(config.get("OPTIONS") or {}), "target_session_attrs": "read-write"})
    try:
        call_command("migrate", database=alias, verbosity=0)
        yield
    finally:
        _disconnect(alias)
        config.update(saved)


def _disconnect(alias: str) -> None:
    """Close the alias's connection and its pool (a pool keeps the servers it was made with)."""
    connection = connections[alias]
    connection.close()
    close_pool = getattr(connection, "close_pool", None)
    if close_pool is not None:
        close_pool()
