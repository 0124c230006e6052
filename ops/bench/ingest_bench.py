"""Ingest and query benchmarks (docs/performance.md §Targets, P1–P4): prints a table and writes ops/bench/results/ingest.json.

    .venv/bin/python ops/bench/ingest_bench.py [--flows 20000] [--runs 3] [--backend sqlite|postgresql]

What it measures, each against something measured in the same run on the same machine:
- P1/P2 end-to-end ingest: `ctxplane run --once` over a demo file bus (both planes), from the
  "running" log line to the "drained" line, events/s; median of --runs fresh stores;
- the floor: read + parse the same file-bus lines + batched durable insert of (event_id, payload)
  into SQLite (synchronous=FULL, one transaction per 2000 rows) — no validation, no logic;
- P3: resolve_flow_binding latency from a separate client process while a publisher appends
  context events at --rate events/s and the supervisor ingests them;
- P4: get_features latency (3 windows, 2 groups, 1 hot key with --hot-events events over 7 days)
  from a separate client process during the same ingest.
Latencies are sorted samples from the client process (p50/p99/p99.9). query_bench.py measures P3/P4
in more detail (idle and during ingest, 1 and 2 clients, SQLite and PostgreSQL).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from common import (
    CLI,
    RESULTS,
    ROOT,
    ClientPool,
    Supervisor,
    features_requests,
    fresh_dsn,
    percentiles,
    preload,
    publisher,
    resolve_requests,
    write_config,
)


def _partition_files(eb: Path, topics: tuple[str, ...] | None) -> list[Path]:
    """The bus's partition files, only those of ``topics`` when given (the topics the run consumes)."""
    return [path for path in sorted(eb.rglob("partition=*.jsonl")) if topics is None or path.parent.name in topics]


def floor_events_per_s(eb: Path, directory: Path, topics: tuple[str, ...] | None = None) -> float:
    """Read + parse + batched durable insert of the same lines, no logic."""
    db = directory / "floor.sqlite"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE events (event_id TEXT PRIMARY KEY, payload TEXT) WITHOUT ROWID")
    started = time.perf_counter()
    rows = []
    count = 0
    for path in _partition_files(eb, topics):
        for line in path.read_bytes().split(b"\n"):
            if not line:
                continue
            envelope = orjson.loads(line)["payload"]
            rows.append((envelope["event_id"], orjson.dumps(envelope["payload"]).decode()))
            if len(rows) == 2000:
                conn.execute("BEGIN")
                conn.executemany("INSERT OR IGNORE INTO events VALUES (?, ?)", rows)
                conn.execute("COMMIT")
                count += len(rows)
                rows.clear()
    if rows:
        conn.execute("BEGIN")
        conn.executemany("INSERT OR IGNORE INTO events VALUES (?, ?)", rows)
        conn.execute("COMMIT")
        count += len(rows)
    elapsed = time.perf_counter() - started
    conn.close()
    return count / elapsed


def _stamp(line: str) -> float | None:
    try:
        event = json.loads(line)
    except ValueError:
        return None
    from datetime import datetime

    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


def ingest_once(config: Path, events: int) -> dict[str, float]:
    proc = subprocess.run([*CLI, "run", "--config", str(config), "--once"], capture_output=True, text=True, check=True)
    start = end = listening = None
    for line in proc.stderr.splitlines():
        if '"query endpoint listening"' in line:
            listening = _stamp(line)
        if '"starting"' in line:
            start = _stamp(line)
        if '"drained every partition; stopping"' in line:
            end = _stamp(line)
    assert start is not None and end is not None, proc.stderr[-2000:]
    return {"events_per_s": events / (end - start), "seconds": end - start,
            "query_ready_after_s": (listening - start) if listening else float("nan")}


def latency_under_ingest(directory: Path, backend: str, rate: float, seconds: float, hot_events: int) -> dict[str, Any]:
    """P3 and P4 together: one resolve client and one get_features client while context events arrive at ``rate``."""
    work = directory / "latency"
    work.mkdir()
    eb = work / "eb"
    # A store that already holds 2000 ready flows and a hot instrument with `hot_events` events over 7 days.
    preload(eb, 2000, hot_events)
    config = write_config(work, fresh_dsn(backend, work))
    subprocess.run([*CLI, "run", "--config", str(config), "--once"], check=True, capture_output=True, cwd=ROOT)
    listen = f"unix:{work / 'q.sock'}"
    supervisor = Supervisor(config, listen, work / "run.log")
    pool = ClientPool(2)
    pub = None
    try:
        jobs = []
        for name, reqs in (("resolve", resolve_requests(2000)), ("features", features_requests())):
            payload = work / f"{name}.json"
            payload.write_text(json.dumps(reqs))
            jobs.append((payload, 0))
        pub = publisher(eb, rate, seconds + 2, 10_000)
        pool.start(listen, jobs, seconds)
        resolve_out, feature_out = pool.collect(2)
        sent = int(pub.communicate()[0] or 0)
    finally:
        if pub is not None and pub.poll() is None:
            pub.terminate()
            pub.wait()
        pool.close()
        supervisor.stop()
    return {
        "ingest_rate_target": rate, "published": sent,
        "resolve_flow_binding": {**percentiles(resolve_out["samples"]), "statuses": resolve_out["statuses"]},
        "get_features_hot_key": {**percentiles(feature_out["samples"]), "statuses": feature_out["statuses"],
                                 "hot_key_events": hot_events},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--rate", type=float, default=5000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--hot-events", type=int, default=100_000)
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--planes", choices=("both", "join"), default="both",
                        help="join: the join plane only (features.enabled: false), context events only")
    args = parser.parse_args()
    from ctxplane.actors.operate.demo_workload import write_demo_bus
    from ctxplane.config.settings import JoinPlaneSettings

    # Join plane only: the run consumes the context topics; the floor reads the same lines.
    topics = tuple(JoinPlaneSettings().topics) if args.planes == "join" else None
    extra: dict[str, dict[str, Any]] = {"features": {"enabled": False}} if args.planes == "join" else {}

    directory = Path(tempfile.mkdtemp(prefix="ctxplane-bench-"))
    try:
        eb = directory / "eb"
        counts = write_demo_bus(eb, args.flows, partitions=4)
        events = sum(n for topic, n in counts.items() if topics is None or topic in topics)
        floors, runs = [], []
        for i in range(args.runs):
            run_dir = directory / f"run{i}"
            run_dir.mkdir()
            shutil.copytree(eb, run_dir / "eb")
            floors.append(floor_events_per_s(eb, run_dir, topics))
            runs.append(ingest_once(write_config(run_dir, fresh_dsn(args.backend, run_dir), **extra), events))
        e2e = statistics.median(r["events_per_s"] for r in runs)
        floor = statistics.median(floors)
        result: dict[str, Any] = {
            "backend": args.backend, "planes": args.planes, "events": events, "runs": args.runs, "cpu_count": os.cpu_count(),
            "load_average_at_start": os.getloadavg(),
            "ingest_events_per_s_median": round(e2e), "ingest_runs": runs,
            "floor_events_per_s_median": round(floor), "floor_over_ingest_ratio": round(floor / e2e, 2),
        }
        if not args.skip_latency and args.planes == "both":
            result["latency"] = latency_under_ingest(directory, args.backend, args.rate, args.seconds, args.hot_events)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.planes == "both" else "-join"
    (RESULTS / f"ingest-{args.backend}{suffix}.json").write_text(json.dumps(result, indent=2))
    shown = "both planes" if args.planes == "both" else "join plane only"
    print(f"backend {args.backend}: {events} events ({shown}), {args.runs} runs, load avg {result['load_average_at_start'][0]:.2f}")
    print(f"  {'ingest (median)':<32}{result['ingest_events_per_s_median']:>12,} events/s")
    print(f"  {'floor: parse + durable insert':<32}{result['floor_events_per_s_median']:>12,} events/s")
    print(f"  {'floor / ingest':<32}{result['floor_over_ingest_ratio']:>12}")
    if "latency" in result:
        lat = result["latency"]
        for op in ("resolve_flow_binding", "get_features_hot_key"):
            p = lat[op]
            print(f"  {op:<24} n={p['n']:<7} p50 {p['p50_ms']:.3f} ms  p99 {p['p99_ms']:.3f} ms  "
                  f"p99.9 {p['p999_ms']:.3f} ms  {p['statuses']}")
        print(f"  (while publishing {lat['published']} events at a target {lat['ingest_rate_target']:.0f} events/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
