"""Replay / rebuild throughput and restart-to-first-READY (targets P5, P6 of docs/performance.md), against floors.

Run: ``.venv/bin/python ops/bench/replay_bench.py [--events N] [--runs N] [--workdir DIR] [--no-live]``

What it measures, on a demo file bus of ~``--events`` events (context + traffic, 6 topics x 2
partitions), SQLite with ``synchronous=FULL``:

- floors, in the same run: read + parse every line (file bus + orjson), and read + classify (the
  intake core the replay runs); the replay cannot beat either;
- rebuild: ``replay`` of the whole bus into a fresh store (events / wall time of the ``replay()`` call,
  store open, migration and the final ``replays`` record included);
- re-replay: the same manifest again over the populated store (every event a duplicate);
- live ingest (unless ``--no-live``): ``ctxplane run --once`` of the same bus into a fresh store,
  process start-up included: the apply path a replay shares, for comparison;
- restart -> first READY: ``ctxplane run`` on the rebuilt store (~N events stored), from spawn to the
  first ``resolve_flow_binding`` answered READY; and the P5 drill: ``kill -9`` during an ingest on
  that store, restart, first READY.

Every figure is the median of ``--runs`` runs. Prints a table and writes
``ops/bench/results/replay.json``. The machine is shared and noisy: compare figures to the floors
of the same run, not across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import orjson
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ctxplane.actors.operate.demo_workload import DEMO_TOPICS, demo_pins, write_demo_bus  # noqa: E402
from ctxplane.actors.operate.replay import replay  # noqa: E402
from ctxplane.actors.operate.replay_manifest import ReplayManifest  # noqa: E402
from ctxplane.actors.operate.replay_windows import intake_rules  # noqa: E402
from ctxplane.config.settings import LoggingSettings, Settings, load_settings  # noqa: E402
from ctxplane.contracts.classes import Plane  # noqa: E402
from ctxplane.contracts.intake import SourceRef  # noqa: E402
from ctxplane.contracts.intake_fast import FastIntake  # noqa: E402
from ctxplane.runtime.bus import FileBus  # noqa: E402
from ctxplane.runtime.client import Client, QueryEndpointUnavailable  # noqa: E402
from ctxplane.runtime.logs import configure_logging  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "replay.json"
TARGET_EVENTS_PER_S = 50_000  # target P6
TARGET_READY_S = 2.0  # target P5 (stated for 10^6 stored events)
# Records per bus read in the floors: the replay's default read size (ingest.batch_max_records).
READ_RECORDS = 2000
READ_BYTES = 8 * 1024 * 1024


def _config(directory: Path, bus_root: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "store": {"dsn": f"sqlite:///{directory / 'store.sqlite'}"},
        "bus": {"root": str(bus_root)},
        "query": {"listen": f"unix:{directory / 'q.sock'}"},
        "metrics": {"listen": None},
        "logging": {"format": "json", "level": "warning"},
        "health": {"artifact_root": str(directory / "artifacts")},
    }
    path = directory / "ctxplane.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def _whole_bus(bus_root: Path) -> ReplayManifest:
    topics = []
    for topic in DEMO_TOPICS:
        parts = sorted(int(p.name.split("=")[1].split(".")[0]) for p in (bus_root / topic).glob("partition=*.jsonl"))
        topics.append({"topic": topic, "partitions": [{"partition": p, "from_offset": 0} for p in parts]})
    return ReplayManifest.model_validate({"topics": topics})


async def _read_all(bus_root: Path, per_record: Callable[[str, int, str, bytes], object]) -> int:
    count = 0
    async with FileBus(bus_root) as bus:
        for topic in DEMO_TOPICS:
            for partition in await bus.list_partitions(topic):
                position = "0"
                while True:
                    result = await bus.read(topic, partition, position, READ_RECORDS, READ_BYTES)
                    if result.next_position == position:
                        break
                    for record in result.records:
                        per_record(topic, partition, record.offset, record.raw)
                    count += len(result.records)
                    position = result.next_position
    return count


def floor_parse(bus_root: Path, _settings: Settings) -> tuple[int, float]:
    began = time.perf_counter()
    n = anyio.run(_read_all, bus_root, lambda _t, _p, _o, raw: orjson.loads(raw))
    return n, time.perf_counter() - began


def floor_classify(bus_root: Path, settings: Settings) -> tuple[int, float]:
    from ctxplane.actors.serve.features import build_feature_plane

    features = build_feature_plane(settings)
    planes = settings.topics()
    # The classifier the replay runs (the fast intake path, the reference verdicts).
    rules = {plane: FastIntake(intake_rules(settings, plane, features, None)).classify for plane in Plane}

    def classify(topic: str, partition: int, offset: str, raw: bytes) -> object:
        return rules[Plane(planes[topic])](SourceRef(topic, partition, offset, "file_line"), raw)

    began = time.perf_counter()
    n = anyio.run(_read_all, bus_root, classify)
    return n, time.perf_counter() - began


def _fresh(directory: Path, bus_root: Path) -> Path:
    shutil.rmtree(directory, ignore_errors=True)
    return _config(directory, bus_root)


def rebuild(work: Path, bus_root: Path, manifest: ReplayManifest, run: int) -> tuple[int, float, Path]:
    config = _fresh(work / f"rebuild-{run}", bus_root)
    began = time.perf_counter()
    report = anyio.run(replay, load_settings(config), manifest)
    return report.events, time.perf_counter() - began, config


def re_replay(config: Path, manifest: ReplayManifest) -> tuple[int, float]:
    began = time.perf_counter()
    report = anyio.run(replay, load_settings(config), manifest)
    assert report.applied == 0, report.summary()
    return report.events, time.perf_counter() - began


def live_ingest(work: Path, bus_root: Path, run: int) -> tuple[int, float]:
    config = _fresh(work / f"live-{run}", bus_root)
    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ctxplane.actors.app.cli", "run", "--config", str(config), "--once"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - began
    conn = sqlite3.connect(f"file:{config.parent / 'store.sqlite'}?mode=ro", uri=True)
    try:
        events = conn.execute("SELECT coalesce(sum(value), 0) FROM intake_counters").fetchone()[0]
    finally:
        conn.close()
    return int(events), seconds


def _spawn(config: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "ctxplane.actors.app.cli", "run", "--config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _until_ready(proc: subprocess.Popen[bytes], config: Path, began: float, timeout: float = 120.0) -> float:
    """Seconds from ``began`` until flow-1 resolves READY over the socket."""
    listen = f"unix:{config.parent / 'q.sock'}"
    request = {"op": "resolve_flow_binding", "pins": demo_pins(), "flow_id": "flow-1", "request_id": "bench"}
    while time.perf_counter() - began < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"ctxplane run exited with {proc.returncode} before answering READY")
        try:
            with Client(listen, timeout_s=10.0) as client:
                if client.request(request).get("status") == "READY":
                    return time.perf_counter() - began
        except QueryEndpointUnavailable:
            pass
        time.sleep(0.005)  # polling a socket that is not up yet; bounds the measurement's resolution
    raise RuntimeError(f"no READY answer within {timeout} s")


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(30)


def restart_to_ready(config: Path) -> float:
    began = time.perf_counter()
    proc = _spawn(config)
    try:
        return _until_ready(proc, config, began)
    finally:
        _kill(proc)


def _committed(config: Path) -> int:
    conn = sqlite3.connect(f"file:{config.parent / 'store.sqlite'}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT coalesce(sum(CAST(next_offset AS INTEGER)), 0) FROM checkpoints").fetchone()[0])
    finally:
        conn.close()


def kill_during_ingest_to_ready(config: Path, bus_root: Path, run: int) -> float:
    """P5: new events arrive, ``kill -9`` once the ingest has committed some, restart, first READY."""
    write_demo_bus(bus_root, 2_000, partitions=2, seed=100 + run)  # ~10k new events: an ingest to interrupt
    before = _committed(config)
    proc = _spawn(config)
    try:
        deadline = time.monotonic() + 120
        while _committed(config) <= before:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the ingest did not commit before the kill")
            time.sleep(0.005)
    finally:
        _kill(proc)
    return restart_to_ready(config)


def _median(samples: list[float]) -> float:
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000, help="approximate events on the bus (5 per flow)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None, help="default: a fresh temp dir, deleted afterwards")
    parser.add_argument("--no-live", action="store_true", help="skip the live `run --once` comparison")
    parser.add_argument("--ready-events", type=int, default=0,
                        help="also measure restart -> first READY on a store of this many events (P5 states 10^6),"
                             " filled by `run --once` over a demo bus of that size")
    args = parser.parse_args()
    configure_logging(LoggingSettings(level="warning"))  # the replay's info lines would bury the table

    work = args.workdir or Path(tempfile.mkdtemp(prefix="ctxbench-"))
    keep = args.workdir is not None
    try:
        bus_root = work / "eb"
        shutil.rmtree(bus_root, ignore_errors=True)
        flows = max(1, args.events // 5)
        write_demo_bus(bus_root, flows, partitions=2)
        manifest = _whole_bus(bus_root)
        settings = load_settings(_config(work / "floor", bus_root))
        throughput: dict[str, dict[str, Any]] = {}

        def record(label: str, samples: list[tuple[int, float]]) -> None:
            rates = [n / s for n, s in samples]
            throughput[label] = {"events": samples[0][0], "median_events_per_s": round(_median(rates)),
                                 "samples_events_per_s": [round(r) for r in rates],
                                 "median_seconds": round(_median([s for _n, s in samples]), 3)}

        record("floor: read + parse (file bus, orjson)", [floor_parse(bus_root, settings) for _ in range(args.runs)])
        record("floor: read + classify (intake core)", [floor_classify(bus_root, settings) for _ in range(args.runs)])
        rebuilds = [rebuild(work, bus_root, manifest, run) for run in range(args.runs)]
        record("rebuild: replay -> fresh store", [(n, s) for n, s, _c in rebuilds])
        rebuilt = rebuilds[-1][2]
        record("re-replay: same manifest, all duplicates", [re_replay(rebuilt, manifest) for _ in range(args.runs)])
        if not args.no_live:
            record("live ingest: run --once -> fresh store", [live_ingest(work, bus_root, 0)])
        stored = _committed(rebuilt)
        ready = {
            "restart -> first READY": [restart_to_ready(rebuilt) for _ in range(args.runs)],
            "kill -9 during ingest -> restart -> first READY": [
                kill_during_ingest_to_ready(rebuilt, bus_root, run) for run in range(args.runs)
            ],
        }
        stored_counts = {label: stored for label in ready}
        if args.ready_events:
            big_bus = work / "eb-big"
            shutil.rmtree(big_bus, ignore_errors=True)
            write_demo_bus(big_bus, max(1, args.ready_events // 5), partitions=2)
            events, seconds = live_ingest(work, big_bus, 1)
            throughput[f"live ingest at scale: run --once -> fresh store ({events} events)"] = {
                "events": events, "median_events_per_s": round(events / seconds), "samples_events_per_s":
                [round(events / seconds)], "median_seconds": round(seconds, 3)}
            big = work / "live-1" / "ctxplane.yaml"
            ready[f"restart -> first READY ({events} stored events)"] = [
                restart_to_ready(big) for _ in range(args.runs)]
            ready[f"kill -9 during ingest -> restart -> first READY ({events} stored events)"] = [
                kill_during_ingest_to_ready(big, big_bus, run) for run in range(args.runs)]
            for label in list(ready)[-2:]:
                stored_counts[label] = _committed(big)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)

    rebuild_rate = throughput["rebuild: replay -> fresh store"]["median_events_per_s"]
    classify_rate = throughput["floor: read + classify (intake core)"]["median_events_per_s"]
    print(f"replay / rebuild, SQLite synchronous=FULL, median of {args.runs} runs, {flows} demo flows")
    print(f"{'what':<48}{'events':>9}{'median':>12}  unit")
    for label, row in throughput.items():
        print(f"{label:<48}{row['events']:>9}{row['median_events_per_s']:>12,}  events/s")
    for label, samples in ready.items():
        print(f"{label:<48}{stored_counts[label]:>9}{_median(samples):>12.3f}  s (stored offsets)")
    verdict = "met" if rebuild_rate >= TARGET_EVENTS_PER_S else "NOT met"
    print(f"P6 target {TARGET_EVENTS_PER_S:,} events/s: {verdict} ({rebuild_rate:,}/s; the intake core alone "
          f"classifies {classify_rate:,}/s here)")
    p5_label = list(ready)[-1]  # the largest store measured
    ready_median = _median(ready[p5_label])
    print(f"P5 target {TARGET_READY_S} s to first READY: {'met' if ready_median <= TARGET_READY_S else 'NOT met'} "
          f"({ready_median:.3f} s with {stored_counts[p5_label]} stored offsets)")

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "benchmark": "replay",
        "runs": args.runs,
        "flows": flows,
        "store": "sqlite synchronous=FULL",
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "throughput": throughput,
        "ready_seconds": {label: {"stored_offsets": stored_counts[label], "median": round(_median(s), 3),
                                  "samples": [round(x, 3) for x in s]} for label, s in ready.items()},
        "targets": {"replay_events_per_s": TARGET_EVENTS_PER_S, "ready_seconds": TARGET_READY_S},
    }, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
