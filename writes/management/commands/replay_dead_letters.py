"""``replay_dead_letters [--list] [--limit N] [--task-id ID …]``: show, then put back, dead-lettered batches.

Replaying is safe to repeat: writes are applied at most once per (tenant, id).
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from writes.dead_letters import DeadLetter, ReplayError, dead_letters_list, dead_letters_replay
from writes.queues import dead_letter_queue_name


class Command(BaseCommand):
    help = "List the dead-letter queue, or publish its messages back to the queues they came from."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--list", "--dry-run", action="store_true", dest="list_only", help="Only show what is there."
        )
        parser.add_argument("--limit", type=int, default=None, help="At most this many messages.")
        parser.add_argument("--task-id", action="append", dest="task_ids", help="Only this message (repeatable).")

    def handle(self, *args: Any, **options: Any) -> None:
        limit = options["limit"]
        if limit is not None and limit < 1:
            raise CommandError("--limit must be at least 1.")
        if options["list_only"]:
            letters = dead_letters_list(limit=limit)
            if options["task_ids"]:
                letters = [letter for letter in letters if letter.task_id in set(options["task_ids"])]
            for letter in letters:
                self.stdout.write(letter.describe())
            self.stdout.write(f"{len(letters)} message(s) in {dead_letter_queue_name()}; nothing changed.")
            return

        def replayed(letter: DeadLetter) -> None:
            self.stdout.write(f"replayed {letter.describe()}")

        task_ids = set(options["task_ids"]) if options["task_ids"] else None
        try:
            done = dead_letters_replay(limit=limit, task_ids=task_ids, on_replayed=replayed)
        except ReplayError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(self.style.SUCCESS(f"{len(done)} message(s) put back on their queues."))
