"""One table of every performance figure of docs/performance.md §Targets, each beside its floor and target.

    .venv/bin/python ops/bench/summary.py

Reads what the benchmarks wrote to ``ops/bench/results/`` (``make bench`` runs them first, in one
session, so figures and floors come from the same machine state), prints one table and writes
``ops/bench/results/summary.json``. A benchmark that did not run shows as "not run"; nothing is
carried over from another machine. Every floor is measured by the benchmark that reports the figure,
in the same run:

- ingest: read + parse the same file-bus lines + batched durable insert into SQLite (FULL);
- rebuild: read + classify the same bus with the intake the replay runs (no store);
- restart -> first READY: none (the process start-up is part of the figure);
- RSS: the same ``run --once`` over an empty bus (interpreter, imports, actor tree);
- query latency: none (the targets are absolute; the load average is printed beside it).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else None


def _row(work: str, figure: str, floor: str, ratio: str, target: str, met: bool | None) -> dict[str, Any]:
    return {"work": work, "figure": figure, "floor": floor, "floor_ratio": ratio, "target": target,
            "met": "not run" if met is None else ("yes" if met else "NO")}


def _missing(work: str, target: str, how: str) -> dict[str, Any]:
    return _row(work, f"not run ({how})", "", "", target, None)


def ingest_rows() -> list[dict[str, Any]]:
    rows = []
    cases = (
        ("ingest-sqlite.json", "ingest, both planes, SQLite FULL (run --once)", 25_000, True),
        ("ingest-sqlite-join.json", "ingest, join plane only, SQLite FULL (run --once)", 25_000, False),
        ("ingest-postgresql.json", "ingest, both planes, PostgreSQL (run --once)", 10_000, False),
        ("ingest-postgresql-join.json", "ingest, join plane only, PostgreSQL (run --once)", 10_000, False),
    )
    for name, work, target, ratio_target in cases:
        data = _load(name)
        target_text = f">= {target:,} ev/s" + (" and <= 3x floor" if ratio_target else "")
        if data is None:
            rows.append(_missing(f"{work}", target_text, f"ops/bench/ingest_bench.py -> {name}"))
            continue
        rate, floor = data["ingest_events_per_s_median"], data["floor_events_per_s_median"]
        ratio = floor / rate
        met = rate >= target and (ratio <= 3 or not ratio_target)
        rows.append(_row(f"{work}, {data['events']:,} events", f"{rate:,} ev/s", f"{floor:,} ev/s",
                         f"{ratio:.1f}x", target_text, met))
    return rows


def replay_rows() -> list[dict[str, Any]]:
    data = _load("replay.json")
    if data is None:
        return [_missing("rebuild from a manifest", ">= 50,000 ev/s", "ops/bench/replay_bench.py"),
                _missing("restart -> first READY", "<= 2 s at 10^6", "ops/bench/replay_bench.py")]
    throughput = data["throughput"]
    rebuild = throughput["rebuild: replay -> fresh store"]
    floor = throughput["floor: read + classify (intake core)"]["median_events_per_s"]
    target = data["targets"]["replay_events_per_s"]
    rows = [_row(f"rebuild: replay -> fresh store, {rebuild['events']:,} events",
                 f"{rebuild['median_events_per_s']:,} ev/s", f"{floor:,} ev/s",
                 f"{floor / rebuild['median_events_per_s']:.1f}x", f">= {target:,} ev/s",
                 rebuild["median_events_per_s"] >= target)]
    limit = data["targets"]["ready_seconds"]
    for label, ready in data["ready_seconds"].items():
        rows.append(_row(f"{label}, {ready['stored_offsets']:,} stored offsets", f"{ready['median']:.2f} s", "", "",
                         f"<= {limit:g} s at 10^6", ready["median"] <= limit))
    return rows


def memory_rows() -> list[dict[str, Any]]:
    data = _load("memory.json")
    if data is None:
        return [_missing("peak RSS under a producer burst", "flat, <= 300 MB at 10^6", "ops/bench/memory_bench.py")]
    cases = data["cases"]
    floor = cases.get("floor: empty bus", {}).get("peak_rss_mb")
    rows = []
    for name, case in cases.items():
        if name.startswith("floor"):
            continue
        rss = case["peak_rss_mb"]
        rows.append(_row(f"peak RSS of run --once, {name}", f"{rss:.0f} MB", f"{floor:.0f} MB" if floor else "",
                         f"{rss / floor:.1f}x" if floor else "", "<= 300 MB", rss <= 300))
    return rows


def query_rows() -> list[dict[str, Any]]:
    data = _load("query.json")
    if data is None:
        return [_missing("query latency", "p99 <= 1 ms (resolve), <= 2 ms (features)", "ops/bench/query_bench.py")]
    targets = {"resolve_flow_binding": {"idle": 0.5, "ingest": 1.0}, "get_features": {"idle": 2.0, "ingest": 2.0}}
    rows = []
    for backend in data["backends"].values():
        for phase in backend["phases"]:
            target = targets[phase["op"]][phase["load"]]
            load = "during ingest" if phase["load"] == "ingest" else "idle"
            rows.append(_row(
                f"{phase['op']} {load}, {phase['backend']}, {phase['clients']} client(s)",
                f"p50 {phase['p50_ms']:.2f} / p99 {phase['p99_ms']:.2f} / p99.9 {phase['p999_ms']:.2f} ms",
                "", f"load {phase['load_average'][0]:.1f}", f"p99 <= {target:g} ms", phase["p99_ms"] <= target))
    return rows


def main() -> int:
    rows = [*ingest_rows(), *replay_rows(), *memory_rows(), *query_rows()]
    widths = {key: max(len(key), *(len(str(row[key])) for row in rows)) for key in rows[0]}
    header = "  ".join(key.ljust(widths[key]) for key in widths)
    print(header)
    print("-" * len(header))
    for row in rows:
        print("  ".join(str(row[key]).ljust(widths[key]) for key in widths))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "summary.json").write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    print(f"wrote {RESULTS / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
