"""Turns a run's results into the targets' verdicts, the JSON file, the plot and the README table.

``python -m bench.report bench/results/<run>.json --update-readme`` redraws the plot and rewrites the
README's table from a saved JSON file, so the README is refreshed from data, never by hand.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
README_START = "<!-- bench:start -->"
README_END = "<!-- bench:end -->"
PRODUCT_SCENARIOS = {
    "single", "client", "single_1k", "batched", "batched_80",
    "chat_single_max", "chat_single", "ledger", "ledger_single",
}  # fmt: skip


def _by_name(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in results if not r.get("failure")}


def _target(name: str, measured: float | None, wanted: str, ok: bool | None) -> dict[str, Any]:
    return {"target": name, "measured": measured, "wanted": wanted, "met": ok}


def evaluate_targets(results: list[dict[str, Any]], duration: float) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured figure; ``met`` is None when a scenario was not run."""
    by = _by_name(results)
    batched, naive, copy, single, single_1k, batched_80 = (
        by.get(n) for n in ("batched", "naive", "copy_limit", "single", "single_1k", "batched_80")
    )
    out = []

    def add(name: str, measured: float | None, wanted: str, check: Callable[[float], bool]) -> None:
        out.append(_target(name, measured, wanted, None if measured is None else check(measured)))

    applied = batched["applied_writes_per_s"] if batched else None
    add(
        "batched applied writes/s (sustained over the run)",
        applied,
        ">= 50,000 for >= 30 s",
        lambda v: v >= 50_000 and duration >= 30,
    )
    add("batched / naive applied", _ratio(batched, naive, "applied_writes_per_s"), ">= 30x", lambda v: v >= 30)
    add("batched / copy_limit applied", _ratio(batched, copy, "applied_writes_per_s"), ">= 0.5", lambda v: v >= 0.5)
    p99 = single_1k["http_latency_ms"].get("p99") if single_1k else None
    add("single p99 HTTP latency at 1,000 req/s offered (ms)", p99, "<= 25", lambda v: v <= 25)
    achieved = single_1k["accepted_writes_per_s"] if single_1k else None
    add(
        "single_1k accepted/s (of 1,000 offered), no errors",
        achieved,
        ">= 990",
        lambda v: v >= 990 and not (single_1k or {}).get("errors"),
    )
    add(
        "single accepted requests/s (closed loop, one event each)",
        single["accepted_writes_per_s"] if single else None,
        ">= 3,000",
        lambda v: v >= 3_000,
    )
    add(
        "single / naive accepted (closed loop)",
        _ratio(single, naive, "accepted_writes_per_s"),
        ">= 8",
        lambda v: v >= 8,
    )
    add(
        "single: applied keeps up (drain after the load, s)",
        single["drain_s"] if single else None,
        "<= 2",
        lambda v: v <= 2,
    )
    client = by.get("client")
    add(
        "client / single applied (32 producers, one event per call, through the client)",
        _ratio(client, single, "applied_writes_per_s"),
        "> 1",
        lambda v: v > 1,
    )
    lag = (batched_80.get("lag_applied_s") or {}).get("p99") if batched_80 else None
    add("end-to-end lag p99 at 80 % of batched (s), accepted → applied", lag, "<= 1", lambda v: v <= 1)
    visible = batched_80.get("lag_visible_s") if batched_80 else None
    add(
        "end-to-end lag p99 at 80 % of batched (s), → visible in read model",
        visible.get("p99") if isinstance(visible, dict) else None,
        "<= 1",
        lambda v: v <= 1,
    )
    cpu = (single.get("cpu_ms_per_write") or {}).get("worker") if single else None
    add("worker CPU per applied write in single (ms)", cpu, "<= 0.1", lambda v: v <= 0.1)
    ledger = by.get("ledger")
    add(
        "ledger applied transfers/s (1,000-transfer requests)",
        ledger["applied_writes_per_s"] if ledger else None,
        ">= 25,000",
        lambda v: v >= 25_000,
    )
    chat = by.get("chat_single")
    inbox = chat.get("lag_visible_s") if chat else None
    add(
        "chat_single inbox lag p99 at 80 % of its capacity (s)",
        inbox.get("p99") if isinstance(inbox, dict) else None,
        "<= 1",
        lambda v: v <= 1,
    )
    ledgers = [r for r in by.values() if r.get("ledger_violations") is not None]
    add(
        "ledger invariants broken (currency sums, guarded balances)",
        sum(r["ledger_violations"] for r in ledgers) if ledgers else None,
        "0",
        lambda v: v == 0,
    )
    # The product's processes only: the baselines' memory is not what the targets are about.
    product = [r for r in by.values() if r["peak_rss_mb"] and not r["name"].startswith("naive")]
    api = max((r["peak_rss_mb"].get("api", 0.0) for r in product), default=None)
    worker = max((r["peak_rss_mb"].get("worker", 0.0) for r in product if "worker" in r["peak_rss_mb"]), default=None)
    add("peak RSS per API process (MB)", api, "<= 200", lambda v: v <= 200)
    add("peak RSS per worker process (MB)", worker, "<= 300", lambda v: v <= 300)
    # The product's guarantee; a baseline that has not drained its queue in time has lost nothing yet.
    # Writes still queued when the drain timed out are late, not lost: only a drained scenario counts.
    checked = [r for r in by.values() if r["name"] in PRODUCT_SCENARIOS and not r.get("messages_left_in_queue")]
    lost = sum(r["not_applied_after_drain"] + r["duplicates"] for r in checked) if checked else None
    add("writes lost or duplicated (product scenarios)", lost, "0", lambda v: v == 0)
    return out  # fmt: skip


def _ratio(top: dict[str, Any] | None, bottom: dict[str, Any] | None, key: str) -> float | None:
    if not top or not bottom or not bottom[key]:
        return None
    return round(float(top[key]) / float(bottom[key]), 2)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def markdown(document: dict[str, Any]) -> str:
    """The README block: when, where, how, the table per scenario and the targets."""
    lines = [
        f"Run `{document['command']}` on {document['date']} "
        f"({document['machine']['cores']} cores, {document['machine']['cpu'] or 'unknown CPU'}, "
        f"{document['machine']['memory_gb']} GB; load average before the run {document['load_average_before']}), "
        f"{document['duration_s']:g} s per scenario. Raw data: `{document['json']}`.",
        *_busy_note(document),
        "",
        "| scenario | accepted/s | applied/s | HTTP p50 / p95 / p99 ms | lag applied p50 / p99 s | "
        "lag visible p99 s | worker CPU ms/write | peak RSS api / worker MB | errors | "
        "not applied (messages still queued) |",
        "|---|---:|---:|---|---|---:|---:|---|---|---:|",
    ]
    for r in document["scenarios"]:
        if r.get("failure"):
            lines.append(f"| {r['name']} | failed: {r['failure'][:80]} | | | | | | | | |")
            continue
        lat = r["http_latency_ms"]
        http = f"{lat['p50']:g} / {lat['p95']:g} / {lat['p99']:g}" if lat else "-"
        lag = r.get("lag_applied_s") or {}
        lag_text = f"{lag['p50']:g} / {lag['p99']:g}" if lag else "-"
        visible = r.get("lag_visible_s")
        visible_text = f"{visible['p99']:g}" if isinstance(visible, dict) and "p99" in visible else "-"
        cpu = (r.get("cpu_ms_per_write") or {}).get("worker")
        cpu_text = f"{cpu:.3f}" if cpu is not None else "-"
        rss = r["peak_rss_mb"]
        rss_text = f"{rss.get('api', '-')} / {rss.get('worker', '-')}" if rss else "-"
        errors = ", ".join(f"{k}: {v}" for k, v in sorted(r["errors"].items())) or "0"
        left = r.get("messages_left_in_queue") or 0
        not_applied = f"{r['not_applied_after_drain']}" + (f" ({left})" if left else "")
        lines.append(
            f"| {r['name']} | {r['accepted_writes_per_s']:,.0f} | {r['applied_writes_per_s']:,.0f} | {http} | "
            f"{lag_text} | {visible_text} | {cpu_text} | {rss_text} | {errors} | {not_applied} |"
        )
    lines += ["", "| target | wanted | measured | met |", "|---|---|---:|---|"]
    for t in document["targets"]:
        verdict = {True: "yes", False: "**no**", None: "not measured"}[t["met"]]
        measured = "-" if t["measured"] is None else f"{t['measured']:,}"
        lines.append(f"| {t['target']} | {t['wanted']} | {measured} | {verdict} |")
    loadgen = [
        f"{r['name']} {r['loadgen'].get('cpu_percent_of_one_core', '-')} %"
        for r in document["scenarios"]
        if r.get("loadgen") and "cpu_percent_of_one_core" in r["loadgen"]
    ]
    if loadgen:
        lines += ["", "Load generator CPU (share of one core): " + ", ".join(loadgen) + "."]
    lines += ["", f"![throughput and latency]({document['plot']})"]
    return "\n".join(lines) + "\n"


def _busy_note(document: dict[str, Any]) -> list[str]:
    # The run loads the machine itself, so only the load before it says whether other work was running.
    cores = document["machine"]["cores"] or 1
    load = document["load_average_before"][0]
    if load <= cores / 2:
        return []
    return [
        "",
        f"**The machine was busy** (1-minute load average {load:g} on {cores} cores before the run: other work "
        "was running): absolute figures are low and noisy; compare scenarios within this run only.",
    ]


def plot(document: dict[str, Any], path: Path) -> None:
    """Applied writes/s over time per scenario (log scale) and HTTP latency percentiles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    for r in document["scenarios"]:
        if r.get("failure") or not r["applied_timeline"]:
            continue
        series = [max(v, 1.0) for v in r["applied_timeline"]]
        left.plot(range(1, len(series) + 1), series, label=r["name"])
    left.set_yscale("log")
    left.set_xlabel("second of the run")
    left.set_ylabel("applied writes/s (rows committed)")
    left.set_title("Throughput over time")
    left.legend(fontsize=8)
    names, p50, p95, p99 = [], [], [], []
    for r in document["scenarios"]:
        lat = r.get("http_latency_ms") or {}
        if r.get("failure") or not lat:
            continue
        names.append(r["name"])
        p50.append(lat["p50"])
        p95.append(lat["p95"])
        p99.append(lat["p99"])
    width = 0.27
    xs = range(len(names))
    right.bar([x - width for x in xs], p50, width, label="p50")
    right.bar(list(xs), p95, width, label="p95")
    right.bar([x + width for x in xs], p99, width, label="p99")
    right.set_xticks(list(xs), names, rotation=20, fontsize=8)
    right.set_yscale("log")
    right.set_ylabel("HTTP latency (ms)")
    right.set_title("Latency percentiles")
    right.legend(fontsize=8)
    figure.suptitle(f"write-absorber bench {document['date']}")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def update_readme(document: dict[str, Any], readme: Path = ROOT / "README.md") -> None:
    text = readme.read_text()
    block = f"{README_START}\n{markdown(document)}{README_END}"
    if README_START in text:
        text = re.sub(re.escape(README_START) + ".*?" + re.escape(README_END), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    readme.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description="Redraw the plot and table of a saved bench run.")
    parser.add_argument("json_path", type=Path)
    parser.add_argument("--update-readme", action="store_true")
    args = parser.parse_args()
    document = json.loads(args.json_path.read_text())
    document["targets"] = evaluate_targets(document["scenarios"], document["duration_s"])
    args.json_path.write_text(json.dumps(document, indent=2) + "\n")
    plot(document, ROOT / document["plot"])
    if args.update_readme:
        update_readme(document)
    print(markdown(document))


if __name__ == "__main__":
    main()
