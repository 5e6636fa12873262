"""The Celery application: configured from Django settings (CELERY_ namespace), tasks autodiscovered.

Workers: ``celery -A config worker -Q writes.shard_0,writes.shard_1``; beat: ``celery -A config beat``.
With ``WORKER_METRICS_PORT`` set, a worker serves the Prometheus metrics of all its pool processes on
that port (multiprocess mode, files in ``PROMETHEUS_MULTIPROC_DIR``, one directory per worker).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from celery import Celery
from celery.signals import worker_init, worker_process_shutdown

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

# prometheus-client picks its storage when first imported, so the directory must be known before any
# task module loads: default to a per-port directory under var/ when only the port was given.
if os.environ.get("WORKER_METRICS_PORT") and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(
        Path(__file__).resolve().parent.parent / "var" / "metrics" / f"worker-{os.environ['WORKER_METRICS_PORT']}"
    )
if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    # Metrics without labels get their file as soon as their module is imported.
    Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]).mkdir(parents=True, exist_ok=True)

app = Celery("config")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
# Shard queues are consumed by the batching apply consumer (several messages per transaction); by
# name, so that Django is set up before the step's module is imported.
app.steps["worker"].add("writes.consumer:BatchingApplyStep")


@app.on_after_configure.connect
def _declare_queues(sender: Celery, **_: object) -> None:
    # Queue declarations live with the write path; importing here keeps Django apps loaded first.
    from writes.queues import all_queues, register_serializer

    register_serializer()
    sender.conf.task_queues = all_queues()


@worker_init.connect
def _start_metrics_exporter(**_: Any) -> None:
    port = os.environ.get("WORKER_METRICS_PORT")
    if port:
        from writes.metrics import start_worker_exporter

        start_worker_exporter(int(port), os.environ.get("WORKER_METRICS_ADDR", "127.0.0.1"))


@worker_process_shutdown.connect
def _forget_pool_process(pid: int | None = None, **_: Any) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from writes.metrics import mark_process_dead

        mark_process_dead(pid or os.getpid())
