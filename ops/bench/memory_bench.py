"""Memory benchmark (docs/performance.md §Targets, P7): peak RSS of `ctxplane run --once`; prints a table, writes
ops/bench/results/memory.json.

    .venv/bin/python ops/bench/memory_bench.py [--line-mb 400] [--events 1000000] [--runs 1]

Two figures, each the peak RSS (``ru_maxrss`` from ``wait4``, so the whole life of the process) of
one `run --once` into a fresh SQLite store (``synchronous=FULL``), next to the floor measured in the
same run: the RSS of the same command over an empty bus (interpreter, imports, actor tree).
- **oversized line**: a file bus holding a valid record, one ``--line-mb`` MB line of junk, and a
  valid record (the whole line must never be read before the size check);
- **burst**: a demo workload of ``--events`` events (both planes, 6 topics x 4 partitions) waiting
  on the bus when the process starts — the 10x-producer burst of P7 at its worst, everything at once.
The bus files are written once under ``--work`` (default: a temp dir) and reused by every run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "ops" / "bench" / "results"
_MB = 1024 * 1024


def _config(directory: Path, eb: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    cfg: dict[str, Any] = {
        "store": {"dsn": f"sqlite:///{directory / 'store.sqlite'}"}, "bus": {"root": str(eb)},
        "query": {"listen": f"unix:{directory / 'q.sock'}"}, "metrics": {"listen": None},
        "logging": {"format": "json", "level": "warning"}, "health": {"artifact_root": str(directory / "art")},
    }
    path = directory / "ctxplane.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


# Measured from a small intermediate process: ru_maxrss keeps its high-water mark across exec, so a
# child forked straight from this process (which may have just generated a bus) would report ours.
_MEASURE = (
    "import os, subprocess, sys\n"
    "proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)\n"
    "_pid, status, usage = os.wait4(proc.pid, 0)\n"
    "print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)\n"
)


def peak_rss(config: Path) -> tuple[float, float]:
    """(peak RSS in MB, seconds) of one `ctxplane run --once`; raises if it fails."""
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", _MEASURE, sys.executable, "-m", "ctxplane.actors.app.cli", "run", "--config", str(config),
         "--once"], capture_output=True, text=True)
    code, max_rss_kib = map(int, result.stdout.split())
    if code != 0:
        raise RuntimeError(f"run --once exited {code}: {result.stderr[-2000:]}")
    return max_rss_kib / 1024, time.perf_counter() - started  # Linux: ru_maxrss is in KiB


def oversized_bus(eb: Path, line_mb: int) -> None:
    from ctxplane.actors.operate.demo_workload import TOPIC_TRAFFIC_FRAUD, write_demo_bus

    write_demo_bus(eb, 10, partitions=1)
    path = eb / TOPIC_TRAFFIC_FRAUD / "partition=0.jsonl"
    good = path.read_bytes().splitlines(keepends=True)[0]
    block = b"x" * _MB
    with open(path, "ab") as fh:
        for _ in range(line_mb):
            fh.write(block)
        fh.write(b"\n")
        fh.write(good)


def burst_bus(eb: Path, events: int) -> int:
    from ctxplane.actors.operate.demo_workload import write_demo_bus

    counts = write_demo_bus(eb, max(1, events // 5), partitions=4)  # ~5 events per demo flow
    return sum(counts.values())


def _median_run(work: Path, name: str, eb: Path, runs: int) -> dict[str, float]:
    peaks, seconds = [], []
    for i in range(runs):
        directory = work / f"{name}-{i}"
        shutil.rmtree(directory, ignore_errors=True)
        peak, took = peak_rss(_config(directory, eb))
        peaks.append(peak)
        seconds.append(took)
        shutil.rmtree(directory, ignore_errors=True)
    return {"peak_rss_mb": round(statistics.median(peaks), 1), "seconds": round(statistics.median(seconds), 1),
            "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--line-mb", type=int, default=400, help="size of the oversized bus line (0: skip)")
    parser.add_argument("--events", type=int, default=1_000_000, help="events in the burst (0: skip)")
    parser.add_argument("--runs", type=int, default=1, help="runs per figure (the median is reported)")
    parser.add_argument("--work", type=Path, default=None, help="where the buses and stores go (kept)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="ctxplane-membench-"))
    work.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict[str, Any]] = {}

    def measure(name: str, key: str, eb: Path) -> None:
        row = rows[name] = _median_run(work, key, eb, args.runs)
        print(f"{name:<28} {row['peak_rss_mb']:>12.1f} {row['seconds']:>9.1f}", flush=True)

    print(f"{'case':<28} {'peak RSS MB':>12} {'seconds':>9}", flush=True)
    empty = work / "empty-eb"
    empty.mkdir(exist_ok=True)
    measure("floor: empty bus", "floor", empty)
    if args.line_mb:
        eb = work / f"line-{args.line_mb}mb-eb"
        if not eb.exists():
            oversized_bus(eb, args.line_mb)
        measure(f"one {args.line_mb} MB line", "line", eb)
    if args.events:
        eb = work / f"burst-{args.events}-eb"
        if not eb.exists():
            burst_bus(eb, args.events)
        measure(f"burst of {args.events} events", "burst", eb)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "memory.json").write_text(json.dumps({"cases": rows, "work": str(work)}, indent=2))


if __name__ == "__main__":
    main()
