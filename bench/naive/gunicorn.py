"""Gunicorn settings of the naive baselines (``bench.naive.wsgi``): a few processes, many threads, as a
plain Django + DRF deployment runs.

Metrics: every worker process writes its Prometheus values to ``PROMETHEUS_MULTIPROC_DIR`` and
``/metrics`` merges them; the directory is emptied when the server starts.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

bind = f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "gthread"
threads = int(os.environ.get("WEB_THREADS", "16"))
# Long enough for the longest long-poll (?wait=30) plus slack.
timeout = 45
graceful_timeout = 10
keepalive = 5
# Recycle workers now and then so a slow leak can never grow without bound.
max_requests = 200_000
max_requests_jitter = 20_000
accesslog = os.environ.get("GUNICORN_ACCESS_LOG") or None
errorlog = "-"

# Set here, in the master, so every worker imports prometheus-client already in multiprocess mode.
os.environ.setdefault(
    "PROMETHEUS_MULTIPROC_DIR",
    str(Path(__file__).resolve().parent.parent / "var" / "metrics" / f"api-{os.environ.get('PORT', '8000')}"),
)


def on_starting(server: Any) -> None:
    # Files left by a previous run's workers would add their counts to this run's.
    directory = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)


def child_exit(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


def _json_logs() -> bool:
    chosen = os.environ.get("LOG_FORMAT")
    if chosen:
        return chosen == "json"
    return os.environ.get("DJANGO_SETTINGS_MODULE") == "config.production"


# The server's own lines (start, worker boot and exit, access log) in the same format as the app's.
if _json_logs():
    logconfig_dict = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "writes.logs.JsonFormatter"}},
        "handlers": {
            "error_console": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"},
            "console": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stdout"},
        },
        "loggers": {
            "gunicorn.error": {"level": "INFO", "handlers": ["error_console"], "propagate": False},
            "gunicorn.access": {"level": "INFO", "handlers": ["console"], "propagate": False},
        },
    }
