"""Real processes for end-to-end tests: Celery workers started against the test databases."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from django.conf import settings
from django.db import connections
from kombu import Connection

from writes.queues import all_queues, dead_letter_queue

ROOT = Path(__file__).resolve().parent.parent


def database_url(alias: str) -> str:
    config = connections[alias].settings_dict
    user = config.get("USER") or "postgres"
    password = f":{config['PASSWORD']}" if config.get("PASSWORD") else ""
    host = config.get("HOST") or "127.0.0.1"
    port = config.get("PORT") or 5432
    return f"postgres://{user}{password}@{host}:{port}/{config['NAME']}"


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


def purge_queues() -> None:
    with Connection(settings.CELERY_BROKER_URL) as connection:
        channel = connection.channel()
        for queue in [*all_queues(), dead_letter_queue()]:
            bound = queue.bind(channel)
            bound.declare()
            bound.purge()


class Worker:
    """One ``celery worker`` process consuming the given queues."""

    def __init__(self, queues: Iterable[str], *, concurrency: int = 1, name: str = "test") -> None:
        self.log_path = ROOT / "var" / f"worker-{name}-{os.getpid()}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("w")
        command = [
            sys.executable, "-m", "celery", "-A", "config", "worker",
            "-Q", ",".join(queues), "-c", str(concurrency), "-n", f"{name}-{os.getpid()}@%h",
            "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "INFO",
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=stack_environment(), stdout=self._log, stderr=subprocess.STDOUT
        )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.log_path.read_text()}")
            if " ready." in self.log_path.read_text():
                return
            time.sleep(0.1)
        raise RuntimeError(f"worker not ready after {timeout}s:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
