"""``move_logical_shard L --to shard_K``: move one logical shard's data to another physical shard online.

Writes keep flowing: they wait in a hold queue only while the shard map switches (see ``writes.moves``).
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from writes.moves import MoveError, logical_shard_move


class Command(BaseCommand):
    help = "Move a logical shard (its write log and rejected writes) to another physical shard, online."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("logical_shard", type=int, help="0 to 255 (a tenant's logical shard is in the admin).")
        parser.add_argument("--to", required=True, dest="target", help="Target physical shard alias, e.g. shard_2.")
        parser.add_argument(
            "--chunk-rows", type=int, default=None, help="Rows per copy batch (WRITES_MOVE_CHUNK_ROWS)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            result = logical_shard_move(
                logical_shard=options["logical_shard"],
                target=options["target"],
                chunk_rows=options["chunk_rows"],
                report=self.stdout.write,
            )
        except MoveError as exc:
            raise CommandError(str(exc)) from exc
        if result.already_there:
            self.stdout.write(self.style.SUCCESS(f"Logical shard {result.logical_shard} is on {result.target}."))
            return
        self.stdout.write(
            self.style.SUCCESS(
                f"Moved logical shard {result.logical_shard} from {result.source} to {result.target}: "
                f"{result.rows_copied} log rows, {result.rejected_copied} rejected writes, "
                f"{result.held_messages} held message(s). The rows stay on {result.source}, unread."
            )
        )
