"""Ingest and query benchmarks (quality.md P1–P4): prints a table and writes ops/bench/results/ingest.json.

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
Latencies are sorted samples from the client process (p50/p99/p99.9).
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
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "ops" / "bench" / "results"


def _config(directory: Path, dsn: str, **extra: Any) -> Path:
    cfg: dict[str, Any] = {
        "store": {"dsn": dsn}, "bus": {"root": str(directory / "eb")},
        "query": {"listen": f"unix:{directory / 'q.sock'}"}, "metrics": {"listen": None},
        "logging": {"format": "json", "level": "info"}, "health": {"artifact_root": str(directory / "art")},
    }
    for section, values in extra.items():
        cfg.setdefault(section, {}).update(values)
    path = directory / "ctxplane.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _bus_lines(eb: Path) -> list[bytes]:
    lines = []
    for path in sorted(eb.rglob("partition=*.jsonl")):
        lines.extend(line for line in path.read_bytes().split(b"\n") if line)
    return lines


def floor_events_per_s(eb: Path, directory: Path) -> float:
    """Read + parse + batched durable insert of the same lines, no logic."""
    db = directory / "floor.sqlite"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE events (event_id TEXT PRIMARY KEY, payload TEXT) WITHOUT ROWID")
    started = time.perf_counter()
    rows = []
    count = 0
    for path in sorted(eb.rglob("partition=*.jsonl")):
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
    proc = subprocess.run([sys.executable, "-m", "ctxplane.actors.app.cli", "run", "--config", str(config), "--once"],
                          capture_output=True, text=True, check=True)
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


def _fresh_dsn(backend: str, directory: Path) -> str:
    if backend == "sqlite":
        return f"sqlite:///{directory / 'store.sqlite'}"
    import anyio

    from tests.support.stores import fresh_dsn

    return anyio.run(fresh_dsn, "postgresql", directory)


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return {"n": len(ordered), "p50_ms": at(0.50), "p99_ms": at(0.99), "p999_ms": at(0.999), "max_ms": ordered[-1] * 1000}


_CLIENT = r'''
import sys, time, json
from ctxplane.runtime.client import Client
listen, kind, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
payload = json.load(open(sys.argv[4]))
samples, statuses = [], {}
with Client(listen) as client:
    for req in payload["warmup"]:
        client.request(req)
    deadline = time.perf_counter() + seconds
    i = 0
    requests = payload["requests"]
    while time.perf_counter() < deadline:
        req = requests[i % len(requests)]
        i += 1
        t = time.perf_counter()
        answer = client.request(req)
        samples.append(time.perf_counter() - t)
        key = answer.get("status")
        statuses[key] = statuses.get(key, 0) + 1
print(json.dumps({"samples": samples, "statuses": statuses}))
'''


def _publisher(eb: Path, rate: float, seconds: float, start_seq: int) -> subprocess.Popen[bytes]:
    code = r'''
import sys, time, anyio
from ctxplane.runtime.bus import FileBus, partition_key_for
from tests.support.workload import context_events
eb, rate, seconds, start = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
async def main():
    bus = FileBus(eb)
    t0 = time.perf_counter(); seq = start; sent = 0
    while time.perf_counter() - t0 < seconds:
        batch = {}
        for _ in range(max(1, int(rate / 20 / 3))):
            for topic, env in context_events(seq):
                batch.setdefault(topic, []).append((partition_key_for(env, None), env))
            seq += 1
        for topic, items in batch.items():
            await bus.publish_many(topic, items, partitions=4)
            sent += len(items)
        ahead = sent / rate - (time.perf_counter() - t0)
        if ahead > 0:
            await anyio.sleep(ahead)
    print(sent)
anyio.run(main)
'''
    return subprocess.Popen([sys.executable, "-c", code, str(eb), str(rate), str(seconds), str(start_seq)],
                            stdout=subprocess.PIPE, cwd=ROOT)


def latency_under_ingest(directory: Path, backend: str, rate: float, seconds: float, hot_events: int) -> dict[str, Any]:
    from tests.support.workload import (
        PINS,
        TRAFFIC_FRAUD,
        context_events,
        envelope,
        publish,
    )

    work = directory / "latency"
    work.mkdir()
    eb = work / "eb"
    # A store that already holds 2000 ready flows and a hot instrument with `hot_events` events over 7 days.
    publish(eb, [item for seq in range(1, 2001) for item in context_events(seq)], partitions=4)
    span_s = 7 * 86400
    hot = [(TRAFFIC_FRAUD[0], envelope(TRAFFIC_FRAUD[1], {"flow_id": f"hf-{i}", "instrument_id": "inst-hot", "amount": (i % 500) + 0.25},
                                       eid=f"{i:064x}", ts_s=i * span_s / hot_events)) for i in range(hot_events)]
    publish(eb, hot, partitions=4)
    config = _config(work, _fresh_dsn(backend, work))
    subprocess.run([sys.executable, "-m", "ctxplane.actors.app.cli", "run", "--config", str(config), "--once"], check=True,
                   capture_output=True)
    proc = subprocess.Popen([sys.executable, "-m", "ctxplane.actors.app.cli", "run", "--config", str(config)], stderr=subprocess.PIPE,
                            text=True)
    try:
        for line in proc.stderr:  # type: ignore[union-attr]
            if '"running"' in line:
                break
        listen = f"unix:{work / 'q.sock'}"
        resolve = [{"op": "resolve_flow_binding", "pins": PINS, "flow_id": f"flow-{i}"} for i in range(1, 2001, 7)]
        as_of = "2026-02-14T05:00:00.000000Z"
        features = [{"op": "get_features", "pins": PINS, "as_of_time_utc": as_of,
                     "feature_keys": [{"key_type": "instrument_id", "key_id": "inst-hot"}],
                     "feature_groups": [{"name": "core_features", "version": "v1"}, {"name": "entity_velocity", "version": "v1"}]}]
        publisher = _publisher(eb, rate, seconds + 2, 10_000)
        clients = []
        for name, reqs in (("resolve", resolve), ("features", features)):
            payload = work / f"{name}.json"
            payload.write_text(json.dumps({"warmup": reqs[:50], "requests": reqs}))
            clients.append(subprocess.Popen([sys.executable, "-c", _CLIENT, listen, name, str(seconds), str(payload)],
                                            stdout=subprocess.PIPE, cwd=ROOT))
        outputs = [json.loads(c.communicate()[0]) for c in clients]
        sent = int(publisher.communicate()[0] or 0)
    finally:
        proc.terminate()
        proc.wait(60)
    resolve_out, feature_out = outputs
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
    args = parser.parse_args()
    from ctxplane.actors.operate.demo_workload import write_demo_bus

    directory = Path(tempfile.mkdtemp(prefix="ctxplane-bench-"))
    try:
        eb = directory / "eb"
        counts = write_demo_bus(eb, args.flows, partitions=4)
        events = sum(counts.values())
        floors, runs = [], []
        for i in range(args.runs):
            run_dir = directory / f"run{i}"
            run_dir.mkdir()
            shutil.copytree(eb, run_dir / "eb")
            floors.append(floor_events_per_s(eb, run_dir))
            runs.append(ingest_once(_config(run_dir, _fresh_dsn(args.backend, run_dir)), events))
        e2e = statistics.median(r["events_per_s"] for r in runs)
        floor = statistics.median(floors)
        result: dict[str, Any] = {
            "backend": args.backend, "events": events, "runs": args.runs, "cpu_count": os.cpu_count(),
            "load_average_at_start": os.getloadavg(),
            "ingest_events_per_s_median": round(e2e), "ingest_runs": runs,
            "floor_events_per_s_median": round(floor), "floor_over_ingest_ratio": round(floor / e2e, 2),
        }
        if not args.skip_latency:
            result["latency"] = latency_under_ingest(directory, args.backend, args.rate, args.seconds, args.hot_events)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"ingest-{args.backend}.json").write_text(json.dumps(result, indent=2))
    print(f"backend {args.backend}: {events} events (both planes), {args.runs} runs, load avg {result['load_average_at_start'][0]:.2f}")
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
