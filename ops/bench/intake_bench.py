"""Intake micro-benchmark: µs per event for the verdict of one bus record, reference path vs fast path.

    .venv/bin/python ops/bench/intake_bench.py [--flows 4000] [--repeats 15]

The records are the demo workload's (actors/operate/demo_workload.py) as the file bus writes them,
classified per (topic, partition) in batches of ``ingest.batch_max_records`` the way the partition
actor does (a SourceRef per record, the batch's verdicts kept until the batch is done), with the
default configuration's intake rules (both planes). Figures:

- ``decode + envelope check + payload hash``: the first steps of each path — the reference's
  orjson.loads, extract_envelope, envelope_error and payload_hash; the fast path's typed decode, run
  lookup, per-event checks, timestamp and payload_hash;
- ``verdict``: everything the partition actor pays per record, for IntakeRules.classify and for
  FastIntake.classify (which also checks the verdicts are identical).

Each figure is the best of ``--repeats`` passes in CPU time of this process (the machine is shared:
wall time is printed beside it), with the load average. Writes ops/bench/results/intake.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ctxplane.actors.operate.demo_workload import write_demo_bus  # noqa: E402
from ctxplane.actors.serve.features import build_feature_plane  # noqa: E402
from ctxplane.config.settings import Settings  # noqa: E402
from ctxplane.contracts.classes import Plane  # noqa: E402
from ctxplane.contracts.envelope import envelope_error  # noqa: E402
from ctxplane.contracts.intake import IntakeRules, SourceRef, extract_envelope, payload_hash  # noqa: E402
from ctxplane.contracts.intake_fast import _PER_EVENT_CHECKS, FastIntake, _run_key  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "intake.json"
# A partition's records: (topic, partition, [(offset, raw)]).
Partition = tuple[str, int, list[tuple[str, bytes]]]


def _partitions(root: Path) -> list[Partition]:
    out = []
    for path in sorted(root.rglob("partition=*.jsonl")):
        lines = [line for line in path.read_bytes().split(b"\n") if line]
        topic = path.parent.name.removeprefix("topic=") if path.parent.name.startswith("topic=") else path.parent.name
        out.append((topic, int(path.stem.split("=")[1]), [(str(i), raw) for i, raw in enumerate(lines)]))
    return out


def _rules(settings: Settings) -> dict[Plane, IntakeRules]:
    features = build_feature_plane(settings)
    return {
        Plane.JOIN: IntakeRules(Plane.JOIN, frozenset(settings.join_plane.topics)),
        Plane.FEATURES: IntakeRules(Plane.FEATURES, frozenset(settings.features.topics),
                                    feature_key_types=features.key_types, parse_amount=features.parse_amount),
    }


def _verdicts(classify: Callable[[SourceRef, bytes], Any], topic: str, partition: int,
              records: list[tuple[str, bytes]], batch: int, keep: list[Any] | None = None) -> None:
    """Classify as the partition actor does: a batch's verdicts live until the batch is sent."""
    for start in range(0, len(records), batch):
        verdicts = [classify(SourceRef(topic, partition, offset, "file_line"), raw) for offset, raw in records[start:start + batch]]
        if keep is not None:
            keep.extend(verdicts)


def _front_steps(_topic: str, _partition: int, records: list[tuple[str, bytes]], batch: int) -> None:
    for start in range(0, len(records), batch):
        kept = []  # like the verdicts, a batch's results live until the batch is done
        for _offset, raw in records[start:start + batch]:
            envelope = extract_envelope(orjson.loads(raw))
            assert envelope is not None and envelope_error(envelope) is None
            kept.append(payload_hash(envelope["event_type"], envelope.get("schema_version"), envelope.get("payload")))


def _fast_front_steps(fast: FastIntake, records: list[tuple[str, bytes]], batch: int) -> None:
    # The same first steps as FastIntake._accept runs them (this bench is the only outside user of
    # these private names): typed decode, the run looked up, per-event checks, timestamp, hash.
    for start in range(0, len(records), batch):
        kept = []
        for _offset, raw in records[start:start + batch]:
            env = fast._decode(raw)
            assert env is not None and fast._runs.get(_run_key(env)) is not None
            for name, check in _PER_EVENT_CHECKS:
                value = getattr(env, name)
                assert value is None or check(value)
            assert fast._ts_us(env.ts_utc) is not None
            kept.append(payload_hash(env.event_type, env.schema_version, orjson.loads(memoryview(env.payload))))


def _best(run: Callable[[], Any], events: int, repeats: int) -> dict[str, float]:
    cpu, wall = [], []
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        run()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return {"cpu_us_per_event": min(cpu) / events * 1e6, "wall_us_per_event": min(wall) / events * 1e6}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    settings = Settings()
    rules = _rules(settings)
    plane_of = {topic: Plane(plane) for topic, plane in settings.topics().items()}
    batch = settings.ingest.batch_max_records
    with tempfile.TemporaryDirectory(prefix="ctxplane-intake-") as tmp:
        write_demo_bus(Path(tmp), args.flows, partitions=4)
        partitions = _partitions(Path(tmp))
    events = sum(len(records) for _, _, records in partitions)

    def reference(keep: list[Any] | None = None) -> None:
        for t, p, records in partitions:
            _verdicts(rules[plane_of[t]].classify, t, p, records, batch, keep)

    fast_paths: list[FastIntake] = []

    def fast(keep: list[Any] | None = None) -> None:
        # A fresh FastIntake per partition and pass, as each partition actor incarnation starts with one.
        fast_paths.clear()
        for t, p, records in partitions:
            fast_paths.append(FastIntake(rules[plane_of[t]]))
            _verdicts(fast_paths[-1].classify, t, p, records, batch, keep)

    expected: list[Any] = []
    got: list[Any] = []
    reference(expected)
    fast(got)
    if got != expected or list(map(repr, got)) != list(map(repr, expected)):
        raise SystemExit("the fast path's verdicts differ from the reference path's")
    del expected, got
    answered_fast = sum(f.fast_verdicts for f in fast_paths) / events
    load = os.getloadavg()
    figures = {
        "reference: decode + envelope check + payload hash": _best(
            lambda: [_front_steps(t, p, records, batch) for t, p, records in partitions], events, args.repeats),
        "fast: decode + envelope check + payload hash": _best(
            lambda: [_fast_front_steps(f, records, batch) for f, (_, _, records) in zip(fast_paths, partitions, strict=True)],
            events, args.repeats),
        "reference: verdict (IntakeRules.classify)": _best(reference, events, args.repeats),
        "fast: verdict (FastIntake.classify)": _best(fast, events, args.repeats),
    }
    result = {"events": events, "flows": args.flows, "batch": batch, "repeats": args.repeats,
              "cpu_count": os.cpu_count(), "load_average": [load, os.getloadavg()],
              "answered_by_fast_path": answered_fast, "figures": figures}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    print(f"intake: {events} demo events (both planes), best of {args.repeats}, load avg {load[0]:.2f} -> "
          f"{os.getloadavg()[0]:.2f}; {answered_fast:.1%} answered by the fast path")
    print(f"  {'':<52}{'cpu µs/event':>14}{'wall µs/event':>15}")
    for name, figure in figures.items():
        print(f"  {name:<52}{figure['cpu_us_per_event']:>14.2f}{figure['wall_us_per_event']:>15.2f}")
    ref = figures["reference: verdict (IntakeRules.classify)"]["cpu_us_per_event"]
    new = figures["fast: verdict (FastIntake.classify)"]["cpu_us_per_event"]
    print(f"  {'verdict speed-up (cpu)':<52}{ref / new:>13.2f}×")
    return 0


if __name__ == "__main__":
    sys.exit(main())
