"""``bench``: run the write path and its baselines side by side and write JSON, a plot and a table.

Everything it measures runs on databases (``<db-prefix>_control``, ``<db-prefix>_shard_N``) and queues
(``<queue-prefix>.*``) of its own, started and stopped here; see ``bench.runner``.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import asdict, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from bench.report import evaluate_targets, markdown, plot, update_readme
from bench.runner import SCENARIOS, BenchRun, Tuning, machine_description
from bench.stack import BenchEnvironment, free_port


class Command(BaseCommand):
    help = "Benchmark the write path against its baselines; writes bench/results/<date>.json and a PNG plot."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--duration", type=float, default=30.0, help="Seconds of load per scenario (30).")
        parser.add_argument(
            "--scenarios", default=",".join(SCENARIOS), help=f"Comma-separated, in order (default: all: {SCENARIOS})."
        )
        parser.add_argument("--db-prefix", default="bench", help="Databases <prefix>_control, <prefix>_shard_N.")
        parser.add_argument("--queue-prefix", default="bench.writes", help="Queues <prefix>.shard_N (bench.writes).")
        parser.add_argument("--port", type=int, default=0, help="HTTP port of the measured API (default: a free one).")
        parser.add_argument("--output-dir", type=Path, default=settings.BASE_DIR / "bench" / "results")
        parser.add_argument(
            "--drain-timeout", type=float, default=120.0, help="Seconds to wait for the queues to drain (120)."
        )
        parser.add_argument("--update-readme", action="store_true", help="Rewrite the README's bench table.")
        parser.add_argument("--api-workers", type=int, default=Tuning.api_workers)
        parser.add_argument("--api-threads", type=int, default=Tuning.api_threads)
        parser.add_argument("--worker-concurrency", type=int, default=Tuning.worker_concurrency)
        parser.add_argument("--worker-prefetch", type=int, default=Tuning.worker_prefetch)
        parser.add_argument("--workers-per-shard", type=int, default=Tuning.workers_per_shard)
        parser.add_argument("--worker-pool", default=Tuning.worker_pool, choices=["solo", "prefork", "threads"])

    def handle(self, *args: Any, **options: Any) -> None:
        scenarios = [s.strip() for s in options["scenarios"].split(",") if s.strip()]
        unknown = [s for s in scenarios if s not in SCENARIOS]
        if unknown or not scenarios:
            raise CommandError(f"Unknown scenario(s) {unknown}; choose from {', '.join(SCENARIOS)}.")
        if options["duration"] <= 0:
            raise CommandError("--duration must be positive.")
        control = settings.DATABASES["default"]
        server = f"postgres://{control.get('USER') or 'postgres'}"
        server += f":{control['PASSWORD']}" if control.get("PASSWORD") else ""
        server += f"@{control.get('HOST') or '127.0.0.1'}:{control.get('PORT') or 5432}"
        environment = BenchEnvironment(
            server_url=server,
            db_prefix=options["db_prefix"],
            queue_prefix=options["queue_prefix"],
            broker_url=settings.CELERY_BROKER_URL,
            shards=len(settings.SHARD_ALIASES),
            port=options["port"] or free_port(),
        )
        tuning = Tuning(
            api_workers=options["api_workers"],
            api_threads=options["api_threads"],
            worker_concurrency=options["worker_concurrency"],
            worker_prefetch=options["worker_prefetch"],
            worker_pool=options["worker_pool"],
            workers_per_shard=options["workers_per_shard"],
        )
        run = BenchRun(
            environment,
            duration=options["duration"],
            scenarios=scenarios,
            tuning=tuning,
            drain_timeout=options["drain_timeout"],
            say=self._say,
        )
        # Ctrl-C and SIGTERM unwind through the runner's finally blocks, which stop every process.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        load_before = [round(v, 2) for v in os.getloadavg()]
        started = datetime.now(UTC)
        begun = time.monotonic()
        try:
            run.prepare()
            results = run.run()
        except KeyboardInterrupt as exc:
            raise CommandError("Interrupted; every process the bench started has been stopped.") from exc
        stem = started.strftime("%Y-%m-%dT%H%M%SZ")
        output_dir: Path = options["output_dir"]
        output_dir.mkdir(parents=True, exist_ok=True)
        json_path, plot_path = output_dir / f"{stem}.json", output_dir / f"{stem}.png"
        document: dict[str, Any] = {
            "date": started.strftime("%Y-%m-%d %H:%M UTC"),
            "command": "python manage.py bench " + _options_text(options),
            "machine": machine_description(),
            "load_average_before": load_before,
            "load_average_after": [round(v, 2) for v in os.getloadavg()],
            "wall_seconds": round(time.monotonic() - begun, 1),
            "duration_s": options["duration"],
            "tuning": asdict(tuning),
            "json": _relative(json_path),
            "plot": _relative(plot_path),
            "scenarios": [asdict(r) for r in results],
        }
        document["targets"] = evaluate_targets(document["scenarios"], options["duration"])
        json_path.write_text(json.dumps(document, indent=2) + "\n")
        plot(document, plot_path)
        if options["update_readme"]:
            update_readme(document)
        self.stdout.write(markdown(document))
        self.stdout.write(f"wrote {json_path} and {plot_path}")

    def _say(self, message: str) -> None:
        self.stdout.write(f"{datetime.now(UTC):%H:%M:%S} {message}")
        self.stdout.flush()


def _options_text(options: dict[str, Any]) -> str:
    parts = [f"--duration {options['duration']:g}"]
    if options["scenarios"] != ",".join(SCENARIOS):
        parts.append(f"--scenarios {options['scenarios']}")
    for name in [f.name for f in fields(Tuning)]:
        default = getattr(Tuning, name)
        if name in options and options[name] != default:
            parts.append(f"--{name.replace('_', '-')} {options[name]}")
    return " ".join(parts)


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(settings.BASE_DIR))
    except ValueError:
        return str(path)
