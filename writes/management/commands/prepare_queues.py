"""``prepare_queues``: write the shard queues' policy from the settings and declare every write-path queue.

Run by ``make run`` and docker-compose's ``migrate`` service after ``migrate``; run it again after
changing ``WRITES_QUEUE_MAX_LENGTH``, ``WRITES_QUEUE_MAX_BYTES`` or ``WRITES_QUEUE_DELIVERY_LIMIT``: the
live queues take the new values at once, nothing restarts.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from writes.queue_policies import QueueSetupError, prepare_queues


class Command(BaseCommand):
    help = "Apply the shard queues' policy (bounds, delivery limit) and declare the write-path queues."

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            prepare_queues(report=self.stdout.write)
        except QueueSetupError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write("queues declared; their bounds follow the policy")
