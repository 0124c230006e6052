"""Idle CPU benchmark: what a caught-up `ctxplane run` costs while nothing is published.

    .venv/bin/python ops/bench/idle_bench.py [--partitions-per-topic 2] [--seconds 20] [--runs 1]

A demo bus (6 topics x ``--partitions-per-topic``; the default 2 gives 12 partitions) is drained by a
`run --once` first, then a long-running `ctxplane run` over it is given a few seconds to settle and
its CPU time (utime + stime from ``/proc/PID/stat``, the supervisor and every child process, i.e. the
query workers) is read over ``--seconds``. The figure is CPU % of one core. It also measures the
wake-up latency of an idle process: the time from one publish to the `basis` op showing it applied.
Writes ops/bench/results/idle.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from common import CLI, RESULTS, ROOT, Supervisor, applied, write_config

_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_ticks(pid: int) -> int:
    """utime + stime of ``pid`` (fields 14 and 15 of /proc/PID/stat; the name may hold spaces)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the query workers)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").iterdir():
            children = (task / "children").read_text().split()
            todo.extend(int(child) for child in children)
    return found


def idle_cpu_percent(pid: int, seconds: float) -> float:
    pids = _tree(pid)
    before = sum(_cpu_ticks(p) for p in pids)
    started = time.monotonic()
    time.sleep(seconds)  # a benchmark's measuring window, not synchronisation
    after = sum(_cpu_ticks(p) for p in pids)
    return 100.0 * (after - before) / _TICK / (time.monotonic() - started)


def wake_latency_ms(eb: Path, listen: str, seq: int) -> float:
    """Publish one flow's arrival event to an idle process; ms until the store holds it."""
    from ctxplane.runtime.client import Client
    from tests.support.workload import context_events, publish

    with Client(listen, timeout_s=10) as client:
        before = applied(client)
        publish(eb, context_events(seq)[:1], partitions=2)
        started = time.monotonic()
        while applied(client) <= before:
            time.sleep(0.002)  # polling the answer of another process: the quantity measured
        return (time.monotonic() - started) * 1000


def measure(work: Path, partitions: int, seconds: float, settle: float) -> dict[str, Any]:
    from ctxplane.actors.operate.demo_workload import write_demo_bus

    eb = work / "eb"
    write_demo_bus(eb, 200, partitions=partitions)
    config = write_config(work, f"sqlite:///{work / 'store.sqlite'}", query={"workers": 1})
    subprocess.run([*CLI, "run", "--config", str(config), "--once"], check=True, capture_output=True, cwd=ROOT)
    listen = f"unix:{work / 'q.sock'}"
    supervisor = Supervisor(config, listen, work / "run.log")
    try:
        time.sleep(settle)  # let start-up work (first health refresh, artifact) pass
        cpu = idle_cpu_percent(supervisor.proc.pid, seconds)
        # Idle for a while first, so a back-off has grown to its ceiling before each publish.
        latencies = []
        for i in range(5):
            time.sleep(3)
            latencies.append(wake_latency_ms(eb, listen, 10_000 + i))
    finally:
        supervisor.stop()
    return {"partitions": 6 * partitions, "cpu_percent": cpu, "wake_ms": latencies}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--partitions-per-topic", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--settle", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    runs = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="ctxplane-idle-") as work:
            runs.append(measure(Path(work), args.partitions_per_topic, args.seconds, args.settle))
    result = {
        "partitions": runs[0]["partitions"], "seconds": args.seconds,
        "cpu_percent_median": statistics.median(r["cpu_percent"] for r in runs),
        "cpu_percent": [round(r["cpu_percent"], 2) for r in runs],
        "wake_ms_median": statistics.median(ms for r in runs for ms in r["wake_ms"]),
        "wake_ms_max": max(ms for r in runs for ms in r["wake_ms"]),
        "load_average": os.getloadavg()[0], "python": platform.python_version(),
    }
    print(f"idle `ctxplane run`, {result['partitions']} file-bus partitions, {args.seconds:.0f} s x {args.runs}: "
          f"{result['cpu_percent_median']:.2f} % of a core (runs {result['cpu_percent']}); "
          f"wake-up after idle: median {result['wake_ms_median']:.0f} ms, max {result['wake_ms_max']:.0f} ms "
          f"(load average {result['load_average']:.1f})")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "idle.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
