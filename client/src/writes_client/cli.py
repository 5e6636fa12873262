"""``writes-client send FILE``: send a file of JSON lines through the client, with a progress bar.

Each line is one write as the API takes it (an event; a message with its ``conversation_id``; a
transfer). A line without an ``id`` gets one derived from the file's content and the line's number
(UUIDv5), so sending the same file again after an interruption repeats ids instead of adding writes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from writes_client.delivery import Dropped
from writes_client.sync import Client
from writes_client.writes import EVENTS, TRANSFERS, InvalidWrite, Item, messages_of, raw_write

KINDS = ("events", "messages", "transfers")
# The namespace of ids derived from a file: uuid5(namespace, file digest), then uuid5(that, line number).
FILE_ID_NAMESPACE = uuid.UUID("8f4d2a4e-5b0c-4c57-9d0e-6f1c1b7a2e90")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="writes-client", description="Send writes to the write absorber's API through the client library."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    send = commands.add_parser(
        "send",
        help="send a file of JSON lines ('-' for standard input), with a progress bar",
        description="Each line is one write; a line without an id gets one derived from the file and its line "
        "number, so sending the same file again adds nothing.",
    )
    send.add_argument("file")
    send.add_argument("--kind", choices=KINDS, default="events")
    send.add_argument("--url", default=os.environ.get("WRITES_API_URL", "http://127.0.0.1:8000"))
    send.add_argument("--key", default=os.environ.get("WRITES_API_KEY"), help="API key (or WRITES_API_KEY)")
    send.add_argument("--batch", type=int, default=1000, help="writes per request (default 1000)")
    send.add_argument("--timeout", type=float, default=300.0, help="seconds to finish sending after the last line")
    send.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if not args.key:
        parser.error("an API key is needed: --key or WRITES_API_KEY")
    return send_file(
        args.file,
        kind=args.kind,
        url=args.url,
        api_key=args.key,
        batch=args.batch,
        timeout=args.timeout,
        progress=not args.no_progress,
    )


def send_file(
    path: str,
    *,
    kind: str,
    url: str,
    api_key: str,
    batch: int = 1000,
    timeout: float = 300.0,
    progress: bool = True,
    out: IO[str] = sys.stderr,
) -> int:
    """Send every line; 0 when every write was accepted, 1 when some were not (listed on ``out``)."""
    dropped: list[Dropped] = []
    source = Path(path) if path != "-" else None
    namespace = uuid.uuid5(FILE_ID_NAMESPACE, _digest(source)) if source is not None else None
    total = source.stat().st_size if source is not None else 0
    bar = Progress(out, total, enabled=progress)
    client = Client(url, api_key, max_batch=batch, on_full="block", block_timeout=3600.0, on_drop=dropped.append)
    lines = 0
    try:
        for number, line, offset in _lines(source):
            lines += 1
            try:
                item = _item(json.loads(line), kind, namespace, number)
            except (ValueError, InvalidWrite) as exc:
                dropped.append(Dropped("invalid", [f"line {number}"], None, str(exc)))
                continue
            client.capture(item)
            bar.show(offset, client.stats().accepted, len(dropped))
        delivered = client.close(timeout)
    except KeyboardInterrupt:
        client.close(5.0)
        out.write("\ninterrupted: send the same file again to finish (ids repeat, writes do not)\n")
        return 130
    stats = client.stats()
    bar.show(total, stats.accepted, stats.dropped + _invalid_lines(dropped), final=True)
    out.write(f"{lines} lines, {stats.accepted} accepted, {len(_ids(dropped))} not accepted\n")
    for report in dropped[:20]:
        more = " …" if len(report.ids) > 5 else ""
        out.write(f"  {report.reason}: {', '.join(report.ids[:5])}{more} {report.detail}\n")
    return 0 if delivered and not dropped else 1


def _item(write: Any, kind: str, namespace: uuid.UUID | None, number: int) -> Item:
    if not isinstance(write, dict):
        raise InvalidWrite("a line must be a JSON object")
    if "id" not in write and namespace is not None:
        write["id"] = str(uuid.uuid5(namespace, str(number)))
    if kind == "events":
        return raw_write(write, EVENTS)
    if kind == "transfers":
        return raw_write(write, TRANSFERS)
    conversation = write.pop("conversation_id", None)
    if not isinstance(conversation, str) or not conversation:
        raise InvalidWrite("a message line needs a conversation_id")
    return raw_write(write, messages_of(conversation))


def _lines(source: Path | None) -> Iterator[tuple[int, bytes, int]]:
    """(line number from 1, line, bytes read so far); blank lines are skipped."""
    stream = source.open("rb") if source is not None else sys.stdin.buffer
    offset = 0
    try:
        for number, line in enumerate(stream, start=1):
            offset += len(line)
            if line.strip():
                yield number, line, offset
    finally:
        if source is not None:
            stream.close()


def _digest(source: Path) -> str:
    digest = hashlib.sha256()
    with source.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _ids(reports: list[Dropped]) -> list[str]:
    return [write_id for report in reports for write_id in report.ids]


def _invalid_lines(reports: list[Dropped]) -> int:
    return sum(len(r.ids) for r in reports if r.ids and r.ids[0].startswith("line "))


class Progress:
    """One line redrawn in place on a terminal (a line every 5 s otherwise): bytes read of the file,
    writes accepted, rate, and writes not accepted."""

    def __init__(self, out: IO[str], total: int, *, enabled: bool) -> None:
        self.out = out
        self.total = total
        self.enabled = enabled
        self.tty = out.isatty()
        self.started = time.monotonic()
        self.shown_at = 0.0

    def show(self, done: int, accepted: int, dropped: int, *, final: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not final and now - self.shown_at < (0.1 if self.tty else 5.0)):
            return
        self.shown_at = now
        rate = accepted / max(now - self.started, 1e-9)
        if self.total:
            fraction = min(1.0, done / self.total)
            filled = int(30 * fraction)
            head = f"[{'#' * filled}{'.' * (30 - filled)}] {100 * fraction:5.1f}%"
        else:
            head = f"{done / 1e6:.1f} MB read"
        line = f"{head}  {accepted:,} accepted  {rate:,.0f}/s  {dropped:,} not accepted"
        self.out.write(f"\r{line}" if self.tty else f"{line}\n")
        if final and self.tty:
            self.out.write("\n")
        self.out.flush()


if __name__ == "__main__":
    sys.exit(main())
