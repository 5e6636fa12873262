"""``runstack``: the whole stack in the foreground (API server, workers as ``WORKER_QUEUES`` lays them out, beat).

Prints the URLs (API, admin, operations page, metrics of the API and of each worker) and a fresh demo
API key. Ctrl-C (or SIGTERM) stops every process it started.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from writes.management.commands.serve_api import api_command, api_environment
from writes.models import ApiKey, Tenant
from writes.queues import maintenance_queue_name, queue_name
from writes.services import api_key_issue, api_key_revoke, shard_for_logical, tenant_create

DEMO_TENANT = "demo"
DEMO_KEY_LABEL = "make run"


def worker_layout() -> list[list[str]]:
    """Queue lists, one per worker process, from WORKER_QUEUES (``;`` between workers, ``,`` within one).

    Default: one worker per shard queue; the first also takes the maintenance queue.
    """
    raw = os.environ.get("WORKER_QUEUES", "").strip()
    if raw:
        return [
            [name.strip() for name in group.split(",") if name.strip()] for group in raw.split(";") if group.strip()
        ]
    layout = [[queue_name(alias)] for alias in settings.SHARD_ALIASES]
    layout[0].append(maintenance_queue_name())
    return layout


class Command(BaseCommand):
    help = "Run the API server, the workers and beat in the foreground until Ctrl-C."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--port", default=os.environ.get("PORT", "8000"))

    def handle(self, *args: Any, **options: Any) -> None:
        port = options["port"]
        secret = self._demo_key()
        metrics_root = settings.BASE_DIR / "var" / "metrics"
        environment = {**os.environ, "PORT": str(port), "PYTHONUNBUFFERED": "1"}
        environment.pop("WORKER_METRICS_PORT", None)
        concurrency = os.environ.get("WORKER_CONCURRENCY", "1")
        metrics_base = int(os.environ.get("WORKER_METRICS_PORT_BASE", "9191"))
        python = sys.executable
        commands: dict[str, list[str]] = {
            "api": api_command(host=os.environ.get("HOST", "127.0.0.1"), port=port, processes=settings.API_PROCESSES),
        }
        # Each process kind gets its own multiprocess metrics directory (emptied when it starts).
        environments: dict[str, dict[str, str]] = {
            "api": api_environment(
                port, {**environment, "PROMETHEUS_MULTIPROC_DIR": str(metrics_root / f"api-{port}")}
            ),
        }
        worker_metrics: list[str] = []
        for index, queues in enumerate(worker_layout()):
            name = f"worker-{index}"
            commands[name] = [
                python, "-m", "celery", "-A", "config", "worker", "-Q", ",".join(queues),
                "--pool", settings.WORKER_POOL, "-c", concurrency,
                "-n", f"{settings.WRITES_QUEUE_PREFIX}-worker{index}@%h", "-l", "INFO",
            ]  # fmt: skip
            environments[name] = {
                **environment,
                "WORKER_METRICS_PORT": str(metrics_base + index),
                "PROMETHEUS_MULTIPROC_DIR": str(metrics_root / f"worker-{index}"),
            }
            worker_metrics.append(f"  {name}: http://127.0.0.1:{metrics_base + index}/metrics  ({', '.join(queues)})")
        commands["beat"] = [
            python, "-m", "celery", "-A", "config", "beat", "-l", "INFO",
            "--schedule", str(settings.BASE_DIR / "var" / "celerybeat-schedule"),
        ]  # fmt: skip
        (settings.BASE_DIR / "var").mkdir(exist_ok=True)

        processes: dict[str, subprocess.Popen[bytes]] = {}
        stopping = False

        def stop(signum: int, frame: Any) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        for name, command in commands.items():
            # Each child leads its own process group, so stopping it also stops its pool children.
            processes[name] = subprocess.Popen(  # noqa: S603
                command, env=environments.get(name, environment), start_new_session=True
            )
        base = f"http://127.0.0.1:{port}"
        self.stdout.write(
            self.style.SUCCESS("\nThe stack is starting; Ctrl-C stops all of it.\n") + f"  API:      {base}/api/v1/\n"
            f"  Docs:     {base}/api/docs/\n"
            f"  Admin:    {base}/{settings.ADMIN_PATH}  (create a login: python manage.py createsuperuser)\n"
            f"  Operations page: {base}/{settings.ADMIN_PATH}operations/\n"
            f"  Health:   {base}/healthz  {base}/readyz\n"
            f"  Metrics:  {base}/metrics  (API processes, queue depth, time to drain, lag)\n"
            + "\n".join(worker_metrics)
            + "\n"
            f"  Demo API key (tenant '{DEMO_TENANT}', shown only now): {secret}\n\n"
            f"  curl -X POST {base}/api/v1/events -H 'Authorization: Bearer {secret}' "
            "-H 'Content-Type: application/json' -d '{\"name\": \"signup\"}'\n"
        )
        exit_code = 0
        try:
            while not stopping:
                for name, process in processes.items():
                    if process.poll() is not None:
                        self.stderr.write(f"{name} exited with status {process.returncode}; stopping the stack.")
                        stopping, exit_code = True, 1
                        break
                time.sleep(0.2)
        finally:
            self._stop_all(processes)
        if exit_code:
            sys.exit(exit_code)

    def _stop_all(self, processes: dict[str, subprocess.Popen[bytes]]) -> None:
        self.stdout.write("Stopping the API, workers and beat…")
        for process in processes.values():
            if process.poll() is None:
                _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for process in processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait()
        # Whatever a child left behind in its group (pool processes) goes too.
        for process in processes.values():
            _signal_group(process, signal.SIGKILL)
        self.stdout.write("Stopped.")

    def _demo_key(self) -> str:
        tenant = Tenant.objects.filter(name=DEMO_TENANT).first() or tenant_create(name=DEMO_TENANT)
        shard_for_logical(tenant.logical_shard)
        # Each run shows a new key; the previous run's demo key stops working.
        for old in ApiKey.objects.filter(tenant=tenant, label=DEMO_KEY_LABEL, revoked_at__isnull=True):
            api_key_revoke(api_key=old)
        return api_key_issue(tenant=tenant, label=DEMO_KEY_LABEL).secret


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signum)
