"""Run the API: uvicorn serving ``config.asgi`` (the edge for the hot routes, Django for the rest)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

# Longer than the longest long-poll (?wait=30), so a graceful stop answers every waiting request.
GRACEFUL_SECONDS = 35


def api_command(*, host: str, port: int | str, processes: int) -> list[str]:
    """The uvicorn command line of the API (also used by the bench and the test stack)."""
    return [
        sys.executable, "-m", "uvicorn", "config.asgi:application",
        "--host", host, "--port", str(port), "--workers", str(processes),
        "--loop", "uvloop", "--http", "httptools", "--lifespan", "on", "--no-access-log",
        "--timeout-graceful-shutdown", str(GRACEFUL_SECONDS), "--timeout-keep-alive", "5",
    ]  # fmt: skip


def api_environment(port: int | str, base: dict[str, str] | None = None) -> dict[str, str]:
    """The API processes' environment: pooled database connections and a fresh metrics directory."""
    environment = dict(os.environ if base is None else base)
    # Django's requests run in a thread each under ASGI: they share a pool, not a connection each.
    environment.setdefault("DATABASE_POOL_MAX_SIZE", "8")
    metrics = environment.setdefault(
        "PROMETHEUS_MULTIPROC_DIR", str(Path(settings.BASE_DIR) / "var" / "metrics" / f"api-{port}")
    )
    # Files left by a previous run's processes would add their counts to this run's.
    shutil.rmtree(metrics, ignore_errors=True)
    Path(metrics).mkdir(parents=True)
    return environment


class Command(BaseCommand):
    help = "Run the API (uvicorn: the ASGI edge plus Django) in the foreground until Ctrl-C."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        parser.add_argument("--port", default=os.environ.get("PORT", "8000"))
        parser.add_argument("--processes", type=int, default=settings.API_PROCESSES)

    def handle(self, *args: Any, **options: Any) -> None:
        command = api_command(host=options["host"], port=options["port"], processes=options["processes"])
        environment = api_environment(options["port"])
        sys.stdout.flush()
        # Replace this process: uvicorn handles Ctrl-C and SIGTERM itself, gracefully.
        os.execvpe(command[0], command, environment)  # noqa: S606
