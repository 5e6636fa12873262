"""Real processes for end-to-end tests: Celery workers started against the test databases."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connections
from django.test import override_settings
from kombu import Connection, Queue

from writes.queue_policies import clear_queue_policies, prepare_queues
from writes.queues import all_queues, dead_letter_queue, exchange

ROOT = Path(__file__).resolve().parent.parent


def database_url(alias: str) -> str:
    config = connections[alias].settings_dict
    user = config.get("USER") or "postgres"
    password = f":{config['PASSWORD']}" if config.get("PASSWORD") else ""
    hosts = str(config.get("HOST") or "127.0.0.1").split(",")
    ports = str(config.get("PORT") or 5432).split(",")
    servers = ",".join(f"{host}:{port}" for host, port in zip(hosts, ports * len(hosts), strict=False))
    attrs = config.get("OPTIONS", {}).get("target_session_attrs")
    query = f"?target_session_attrs={attrs}" if attrs else ""
    return f"postgres://{user}{password}@{servers}/{config['NAME']}{query}"


def stack_environment() -> dict[str, str]:
    """The environment a child process needs to see exactly what the tests see."""
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.test_settings",
        "DATABASE_URL": database_url("default"),
        "SHARD_DATABASE_URLS": ",".join(database_url(alias) for alias in settings.SHARD_ALIASES),
        "WRITES_QUEUE_PREFIX": settings.WRITES_QUEUE_PREFIX,
        "PYTHONUNBUFFERED": "1",
    }


def queue_depth(queue: Queue) -> int:
    """Messages ready in a queue (declared first, so a queue not used yet counts as empty)."""
    with Connection(settings.CELERY_BROKER_URL) as connection:
        channel: Any = connection.channel()
        bound: Any = queue.bind(channel)
        bound.declare()
        return int(bound.queue_declare(passive=True).message_count)


def purge_queues() -> None:
    with Connection(settings.CELERY_BROKER_URL) as connection:
        channel = connection.channel()
        for queue in [*all_queues(), dead_letter_queue()]:
            bound = queue.bind(channel)
            bound.declare()
            bound.purge()


def delete_queues(prefix: str) -> None:
    """Delete the write-path queues, exchange and policy of ``prefix`` (a test's own)."""
    with override_settings(WRITES_QUEUE_PREFIX=prefix), Connection(settings.CELERY_BROKER_URL) as connection:
        channel: Any = connection.channel()
        for queue in [*all_queues(), dead_letter_queue()]:
            queue.bind(channel).delete()
        exchange().bind(channel).delete()
        clear_queue_policies()


@contextlib.contextmanager
def queues_of_their_own(name: str, *, policy: bool = False, **overrides: Any) -> Iterator[str]:
    """Settings naming write-path queues of this test's own, which no other test's worker consumes
    (``<prefix>.<name>.<random>``); with ``policy`` their policy from ``overrides`` is written first.
    Everything is deleted afterwards."""
    prefix = f"{settings.WRITES_QUEUE_PREFIX}.{name}.{uuid.uuid4().hex[:8]}"
    try:
        with override_settings(WRITES_QUEUE_PREFIX=prefix, **overrides):
            if policy:
                prepare_queues()
            yield prefix
    finally:
        delete_queues(prefix)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


def terminate(process: subprocess.Popen[bytes]) -> None:
    """Stop a child gracefully (SIGTERM), or kill it if it has not stopped within 15 s."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# Each worker's node name is its own: two live at once under one name would fight over its
# exclusive remote-control queue, and the second would exit (RESOURCE_LOCKED).
_worker_numbers = itertools.count(1)


class Worker:
    """One ``celery worker`` process consuming the given queues, exporting its metrics on ``metrics_port``."""

    def __init__(
        self,
        queues: Iterable[str],
        *,
        concurrency: int = 1,
        name: str = "test",
        environment: dict[str, str] | None = None,
    ) -> None:
        self.metrics_port = free_port()
        self._metrics_dir = tempfile.TemporaryDirectory(prefix="worker-metrics-")
        self.log_path = ROOT / "var" / f"worker-{name}-{os.getpid()}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("a")
        self.node = f"{name}-{os.getpid()}-{next(_worker_numbers)}@{socket.gethostname()}"
        command = [
            sys.executable, "-m", "celery", "-A", "config", "worker",
            "-Q", ",".join(queues), "-c", str(concurrency), "-n", self.node,
            "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "INFO",
        ]  # fmt: skip
        self._log_start = self.log_path.stat().st_size
        # Its own process group, so a test can kill the worker and its pool children at once.
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            env={
                **stack_environment(),
                "WORKER_METRICS_PORT": str(self.metrics_port),
                "PROMETHEUS_MULTIPROC_DIR": self._metrics_dir.name,
                **(environment or {}),
            },
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._wait_ready()

    def metrics(self) -> str:
        return scrape(f"http://127.0.0.1:{self.metrics_port}/metrics")

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Wait until the worker runs no task and holds none in reserve (a task's last steps, such as the
        metrics it counts after COMMIT, are then done)."""
        from config.celery import app

        deadline = time.monotonic() + timeout
        while True:
            inspect = app.control.inspect(destination=[self.node], timeout=1.0)
            active, reserved = inspect.active() or {}, inspect.reserved() or {}
            if self.node in active and not active[self.node] and not reserved.get(self.node):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"worker {self.node} still busy after {timeout}s: {active} {reserved}")
            time.sleep(0.1)

    def log_text(self) -> str:
        """What this process wrote (the log file may hold earlier workers' lines too)."""
        with self.log_path.open() as log:
            log.seek(self._log_start)
            return log.read()

    def kill(self) -> None:
        """SIGKILL the worker and its pool children, as the OOM killer or a lost machine would."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self._log.close()
        self._metrics_dir.cleanup()

    def _wait_ready(self, timeout: float = 90.0) -> None:
        # Generous: on a busy two-core machine a worker can take tens of seconds to boot.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.log_text()}")
            if " ready." in self.log_text():
                return
            time.sleep(0.1)
        raise RuntimeError(f"worker not ready after {timeout}s:\n{self.log_text()}")

    def stop(self) -> None:
        if self._log.closed:
            return
        terminate(self.process)
        self._log.close()
        self._metrics_dir.cleanup()


class ApiServer:
    """The API in processes of its own (``serve_api``'s uvicorn command), as production runs it."""

    def __init__(self, *, workers: int = 2, environment: dict[str, str] | None = None, port: int | None = None) -> None:
        from writes.management.commands.serve_api import api_command, api_environment

        self.port = port or free_port()  # a given port: a restarted API where clients expect it
        self.url = f"http://127.0.0.1:{self.port}"
        self._metrics_dir = tempfile.TemporaryDirectory(prefix="api-metrics-")
        self.log_path = ROOT / "var" / f"api-{os.getpid()}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("w")
        base = {**stack_environment(), "PROMETHEUS_MULTIPROC_DIR": self._metrics_dir.name, **(environment or {})}
        self.process = subprocess.Popen(
            api_command(host="127.0.0.1", port=self.port, processes=workers),
            cwd=ROOT,
            env=api_environment(self.port, base),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: ``kill`` takes uvicorn's children too
        )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the API exited early:\n{self.log_path.read_text()}")
            try:
                scrape(f"{self.url}/healthz")
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"the API was not ready after {timeout}s:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        terminate(self.process)
        self._log.close()
        self._metrics_dir.cleanup()

    def kill(self) -> None:
        """SIGKILL every process of the API at once, as a lost machine would: no answer for what is in flight."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self._log.close()
        self._metrics_dir.cleanup()


@contextlib.contextmanager
def failing_transiently(shard: str, tenant_id: uuid.UUID) -> Iterator[None]:
    """Every insert of this tenant's writes fails with a serialization failure: transient, yet never passing."""
    with connections[shard].cursor() as cursor:
        cursor.execute(
            f"""
            CREATE FUNCTION test_fail_tenant() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.tenant_id = '{tenant_id}' THEN
                    RAISE EXCEPTION 'simulated conflict' USING ERRCODE = 'serialization_failure';
                END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER test_fail_tenant BEFORE INSERT ON write_log
                FOR EACH ROW EXECUTE FUNCTION test_fail_tenant();
            """
        )
    try:
        yield
    finally:
        with connections[shard].cursor() as cursor:
            cursor.execute("DROP TRIGGER test_fail_tenant ON write_log; DROP FUNCTION test_fail_tenant();")


def dead_letter_depth() -> int:
    return queue_depth(dead_letter_queue())
