"""The README's fault table, drawn from ``var/faults/*.json`` (what ``make faults`` writes).

python -m tests.faults.report                  # print the table
python -m tests.faults.report --update-readme  # and put it between the README's fault markers
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent
RESULTS = ROOT / "var" / "faults"
README = ROOT / "README.md"
START, END = "<!-- faults:start -->", "<!-- faults:end -->"


def _worker(evidence: dict[str, Any]) -> str:
    kills = evidence.get("kills", [])
    states = sorted({k["state"] for k in kills})
    gap = max((k["seen_to_kill_ms"] for k in kills), default=0)
    return (
        f"{len(kills)} kills, each of a worker seen in `pg_stat_activity` inside an apply transaction "
        f"({', '.join(states)}) at most {gap} ms before the SIGKILL"
    )


def _worker_multi(evidence: dict[str, Any]) -> str:
    kills = evidence.get("kills", [])
    claimed = [k["messages_claimed"] for k in kills] or [0]
    writes = [k["writes_named"] for k in kills] or [0]
    aborted = sum(k["transaction"] == "aborted" for k in kills)
    applied = sum(k.get("fates_after", {}).get("applied", 0) for k in kills)
    abandoned = sum(k.get("fates_after", {}).get("abandoned", 0) for k in kills)
    ledger = sum(k.get("ledger_account_rows_locked_or_written", 0) > 0 for k in kills)
    gap = max((k["seen_to_kill_ms"] for k in kills), default=0)
    missed = evidence.get("missed", [])
    return (
        f"{len(kills)} kills, each at most {gap} ms after `pg_stat_activity` showed the worker inside an apply "
        f"transaction of several messages; read from its pages (`pageinspect`), each had claimed "
        f"{min(claimed)} to {max(claimed)} messages in `publish_fates` ({min(writes):,} to {max(writes):,} writes; "
        f"{ledger} with ledger account rows locked or written), "
        f"{aborted} of {len(kills)} `aborted` per `pg_xact_status`; "
        f"of the {sum(claimed):,} messages they held, {applied:,} applied later by the next worker"
        + (f", {abandoned:,} abandoned by the API" if abandoned else "")
        + (f"; {len(missed)} more kills not counted (the transaction committed first)" if missed else "")
    )


def _broker(evidence: dict[str, Any]) -> str:
    return (
        f"down {evidence.get('seconds_down')} s; all {evidence.get('answers_while_down')} answers to requests "
        f"sent and answered in its first {evidence.get('seconds_judged_down')} s: "
        f"{'/'.join(str(s) for s in evidence.get('answers_while_down_by_status', []))} with `Retry-After`"
    )


def _shard(evidence: dict[str, Any]) -> str:
    return (
        f"{evidence.get('outage_seconds')} s down: {evidence.get('accepted_for_down_shard_during_outage'):,} writes "
        f"accepted for it, {evidence.get('writes_held_until_the_shard_was_back', 0):,} of them held (queued or "
        f"prefetched, unacked) and applied only once it was back, "
        f"{evidence.get('applied_on_other_shard_during_outage'):,} applied on the other shard meanwhile"
    )


def _api(evidence: dict[str, Any]) -> str:
    kills = evidence.get("kills", [])
    cut = sum(k["requests_cut"] for k in kills)
    writes = sum(k["writes_in_cut_requests"] for k in kills)
    return f"{len(kills)} kills cut {cut} requests in flight ({writes:,} writes, no answer, so nothing promised)"


def _poison(evidence: dict[str, Any]) -> str:
    return (
        f"{evidence.get('poison_rows')} poison rows beside {evidence.get('good_rows_beside_poison'):,} good ones; "
        f"{evidence.get('dead_lettered')} batch failing transiently dead-lettered, listed and replayed"
    )


def _node_kill(evidence: dict[str, Any]) -> str:
    kills = evidence.get("kills", [])
    led = sum(len(k.get("queues_it_led", [])) for k in kills)
    return (
        f"{len(kills)} SIGKILLs of the node leading the shard queues ({led} queue leaderships moved); "
        f"writes refused at most {evidence.get('seconds_without_a_202')} s "
        f"({sum(k.get('refused_answers', 0) for k in kills)} refusals, 503 with `Retry-After`)"
    )


def _quorum_loss(evidence: dict[str, Any]) -> str:
    return (
        f"2 of 3 nodes down {evidence.get('seconds_without_quorum')} s: "
        f"all {evidence.get('answers_while_without_quorum')} "
        f"answers {'/'.join(str(s) for s in evidence.get('answers_while_without_quorum_by_status', []))} with "
        f"`Retry-After`, {evidence.get('accepted_while_without_quorum')} accepted; a 202 again "
        f"{evidence.get('seconds_from_node_back_to_first_202')} s after a node returned"
    )


def _failover(evidence: dict[str, Any]) -> str:
    states = ", ".join(row[1] for row in evidence.get("replication_before_kill", []))
    return (
        f"primary SIGKILLed with a synchronous standby ({states}), promoted "
        f"{evidence.get('seconds_kill_to_promoted')} s later; nothing applied for "
        f"{evidence.get('seconds_without_applying')} s, "
        f"writes refused at most {evidence.get('seconds_without_a_202')} s"
    )


FAULTS: dict[str, tuple[str, Callable[[dict[str, Any]], str]]] = {
    "worker_sigkill": ("worker SIGKILL inside a batch transaction", _worker),
    "worker_sigkill_multi_message": ("worker SIGKILL inside a multi-message transaction", _worker_multi),
    "broker_restart": ("RabbitMQ stopped and restarted", _broker),
    "shard_unavailable": ("one shard unreachable", _shard),
    "api_sigkill": ("API process SIGKILL with requests in flight", _api),
    "poison_writes": ("poison writes, transient failure → dead letter", _poison),
    "broker_node_kill": ("RabbitMQ node leading the queues SIGKILLed (3-node cluster)", _node_kill),
    "broker_quorum_loss": ("2 of 3 RabbitMQ nodes stopped, one returns", _quorum_loss),
    "shard_failover": ("shard primary SIGKILLed, standby promoted", _failover),
}

COLUMNS = (
    ("accepted", "accepted"),
    ("applied", "applied"),
    ("legitimately_rejected", "rejected (`insufficient_funds`)"),
    ("lost", "lost"),
    ("duplicated", "duplicated (log, read models, balances)"),
    ("wrongly_rejected", "wrongly rejected"),
    ("refused_then_applied", "refused, then applied"),
    ("read_model_mismatches", "read-model mismatches"),
    ("ledger_invariant_violations", "ledger invariant violations"),
)


def table(results: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| fault | " + " | ".join(title for _, title in COLUMNS) + " | where it struck |",
        "|---|" + "---:|" * len(COLUMNS) + "---|",
    ]
    for name, (title, describe) in FAULTS.items():
        found = results.get(name)
        if found is None:
            continue
        figures = " | ".join(f"{found[key]:,}" for key, _ in COLUMNS)
        lines.append(f"| {title} | {figures} | {describe(found.get('evidence', {}))} |")
    return "\n".join(lines)


def load_results(directory: Path = RESULTS) -> dict[str, dict[str, Any]]:
    return {path.stem: json.loads(path.read_text()) for path in sorted(directory.glob("*.json"))}


def update_readme(text: str, rendered: str) -> str:
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.DOTALL)
    if not pattern.search(text):
        raise SystemExit(f"README.md has no {START} … {END} section")
    return pattern.sub(lambda _: f"{START}\n{rendered}\n{END}", text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--update-readme", action="store_true")
    options = parser.parse_args()
    rendered = table(load_results())
    print(rendered)
    if options.update_readme:
        README.write_text(update_readme(README.read_text(), rendered))


if __name__ == "__main__":
    main()
