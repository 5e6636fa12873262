"""The processes a benchmark scenario measures: the API (uvicorn; gunicorn for the naive baselines) and
Celery workers, on the bench's own databases.

``BenchEnvironment`` says where everything lives (databases, queue prefix, port); ``Stack`` starts the
API and workers for one scenario, waits until they serve, reports their peak memory and stops them.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from kombu import Connection

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class BenchEnvironment:
    """Databases ``<db_prefix>_control`` and ``<db_prefix>_shard_<n>``, queues ``<queue_prefix>.*``."""

    server_url: str  # postgres://user@host:port (no database)
    db_prefix: str
    queue_prefix: str
    broker_url: str
    shards: int = 2
    port: int = field(default_factory=free_port)
    log_dir: Path = ROOT / "var" / "bench"

    @property
    def control_url(self) -> str:
        return f"{self.server_url}/{self.db_prefix}_control"

    @property
    def shard_urls(self) -> list[str]:
        return [f"{self.server_url}/{self.db_prefix}_shard_{index}" for index in range(self.shards)]

    @property
    def shard_aliases(self) -> list[str]:
        return [f"shard_{index}" for index in range(self.shards)]

    def queue(self, name: str) -> str:
        return f"{self.queue_prefix}.{name}"

    def variables(self, settings_module: str) -> dict[str, str]:
        return {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": settings_module,
            "DATABASE_URL": self.control_url,
            "SHARD_DATABASE_URLS": ",".join(self.shard_urls),
            "WRITES_QUEUE_PREFIX": self.queue_prefix,
            "CELERY_BROKER_URL": self.broker_url,
            "SECRET_KEY": secrets.token_urlsafe(32),
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            # Plain HTTP on the loopback: production's https redirect and HSTS do not apply.
            "SECURE_SSL_REDIRECT": "0",
            "SECURE_HSTS_SECONDS": "0",
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
        }

    def manage(self, *arguments: str, settings_module: str = "bench.settings") -> str:
        """Run a management command against the bench databases; its output, or an error with it."""
        completed = subprocess.run(  # noqa: S603
            [sys.executable, "manage.py", *arguments],
            cwd=ROOT,
            env=self.variables(settings_module),
            capture_output=True,
            text=True,
            check=False,
        )
        if completed.returncode != 0:
            raise RuntimeError(f"manage.py {' '.join(arguments)} failed:\n{completed.stdout}\n{completed.stderr}")
        return completed.stdout

    def connect(self, alias: str) -> psycopg.Connection[tuple[Any, ...]]:
        url = self.control_url if alias == "default" else self.shard_urls[int(alias.rsplit("_", 1)[1])]
        # No server-side prepared statements: a generic plan for the sampler's ``position > $1`` guessed
        # a third of the log and ran a parallel sequential scan twice a second, a CPU cost that grew with
        # the log and slowed every later scenario.
        return psycopg.connect(url, autocommit=True, prepare_threshold=None)

    def purge_queues(self, names: list[str]) -> None:
        """Empty the bench's queues between scenarios; a queue that does not exist yet is fine."""
        with Connection(self.broker_url) as connection:
            for name in names:
                channel: Any = connection.channel()
                try:
                    channel.queue_purge(name)
                except Exception:  # noqa: S112 - not declared yet: nothing to purge
                    continue
                finally:
                    with contextlib.suppress(Exception):
                        channel.close()

    def queue_depth(self, names: list[str]) -> int:
        """Messages ready in these queues (0 for a queue that does not exist)."""
        total = 0
        with Connection(self.broker_url) as connection:
            for name in names:
                channel: Any = connection.channel()
                try:
                    _, messages, _ = channel.queue_declare(name, passive=True)
                    total += int(messages)
                except Exception:  # noqa: S112 - not declared: empty
                    continue
                finally:
                    with contextlib.suppress(Exception):
                        channel.close()
        return total


@dataclass
class ProcessSpec:
    role: str  # "api", "worker" (applies writes) or "housekeeping" (maintenance queue)
    command: list[str]
    queue: str = ""  # a worker is ready once it consumes from this queue
    environment: dict[str, str] = field(default_factory=dict)  # on top of the stack's variables


class Stack:
    """Started processes of one scenario; each leads its own process group."""

    def __init__(self, environment: BenchEnvironment, settings_module: str, specs: list[ProcessSpec]) -> None:
        self.environment = environment
        self.settings_module = settings_module
        self.specs = specs
        self.processes: list[tuple[ProcessSpec, subprocess.Popen[bytes], Path]] = []

    def start(self, *, timeout: float = 90.0) -> None:
        self.environment.log_dir.mkdir(parents=True, exist_ok=True)
        variables = self.environment.variables(self.settings_module)
        for index, spec in enumerate(self.specs):
            log_path = self.environment.log_dir / f"{spec.role}-{index}.log"
            with log_path.open("w") as log:
                process = subprocess.Popen(  # noqa: S603
                    spec.command,
                    cwd=ROOT,
                    env={**variables, **spec.environment},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self.processes.append((spec, process, log_path))
        deadline = time.monotonic() + timeout
        for spec, process, log_path in self.processes:
            while not self._ready(spec, log_path):
                if process.poll() is not None:
                    raise RuntimeError(f"{spec.role} exited early:\n{log_path.read_text()[-4000:]}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{spec.role} not ready after {timeout}s:\n{log_path.read_text()[-4000:]}")
                time.sleep(0.2)

    def _ready(self, spec: ProcessSpec, log_path: Path) -> bool:
        if spec.queue:
            return self._consumers(spec.queue) > 0
        try:
            connection = http.client.HTTPConnection("127.0.0.1", self.environment.port, timeout=2)
            connection.request("GET", "/healthz")
            ok = connection.getresponse().status == 200
            connection.close()
            return ok
        except OSError:
            return False

    def _consumers(self, queue: str) -> int:
        try:
            with Connection(self.environment.broker_url, connect_timeout=2) as connection:
                channel: Any = connection.channel()
                _, _, consumers = channel.queue_declare(queue, passive=True)
                return int(consumers)
        except Exception:  # not declared yet, or the broker is busy: not ready
            return 0

    def peak_rss_mb(self) -> dict[str, float]:
        """The largest peak resident set (VmHWM) of any process of each role, in MB."""
        peaks: dict[str, float] = {}
        for spec, process, _ in self.processes:
            for pid in _group_members(process.pid):
                peak = _vm_hwm_kb(pid) / 1024
                peaks[spec.role] = round(max(peaks.get(spec.role, 0.0), peak), 1)
        return peaks

    def stop(self) -> None:
        for _, process, _ in self.processes:
            if process.poll() is None:
                _signal_group(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for _, process, _ in self.processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(process.pid, signal.SIGKILL)
                process.wait()
        for _, process, _ in self.processes:
            _signal_group(process.pid, signal.SIGKILL)  # pool children left in the group
        self.processes = []


def gunicorn_command(*, workers: int, threads: int) -> list[str]:
    """The naive baselines' server: a plain Django + DRF deployment under gunicorn."""
    return [
        sys.executable, "-m", "gunicorn", "bench.naive.wsgi:application", "-c", "bench/naive/gunicorn.py",
        "--workers", str(workers), "--threads", str(threads),
    ]  # fmt: skip


def api_process(*, port: int, processes: int) -> ProcessSpec:
    """The product's API as ``serve_api`` runs it: uvicorn with the edge, pooled Django connections."""
    from writes.management.commands.serve_api import api_command

    return ProcessSpec(
        "api",
        api_command(host="127.0.0.1", port=port, processes=processes),
        environment={"DATABASE_POOL_MAX_SIZE": "8"},
    )


def worker_command(queues: list[str], *, name: str, concurrency: int, prefetch: int, pool: str) -> list[str]:
    """A worker as ``make run`` starts it (same pool); shard queues go to its batching apply consumer,
    whose prefetch is ``WRITES_APPLY_PREFETCH`` (``prefetch`` here only concerns Celery's own queues)."""
    return [
        sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", ",".join(queues), "--pool", pool,
        "-c", str(concurrency), "--prefetch-multiplier", str(prefetch), "-n", f"{name}@%h",
        "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "WARNING",
    ]  # fmt: skip


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields after the command: state, ppid, pgrp, ...
            members.append(int(entry.name))
    return members


def _vm_hwm_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)
