"""The Celery application: configured from Django settings (CELERY_ namespace), tasks autodiscovered.

Workers: ``celery -A config worker -Q writes.shard_0,writes.shard_1``; beat: ``celery -A config beat``.
"""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("config")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.on_after_configure.connect
def _declare_queues(sender: Celery, **_: object) -> None:
    # Queue declarations live with the write path; importing here keeps Django apps loaded first.
    from writes.queues import all_queues, register_serializer

    register_serializer()
    sender.conf.task_queues = all_queues()
