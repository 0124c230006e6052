"""Envelopes for tests: valid by default, easy to break on purpose."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from ctxplane.contracts.timestamps import format_ts_us, parse_ts_us

RUN = "platform_20260207T000000Z"
OTHER_RUN = "platform_20260208T000000Z"
SCENARIO_RUN = "a" * 32
PINS: dict[str, Any] = {
    "platform_run_id": RUN,
    "scenario_run_id": SCENARIO_RUN,
    "manifest_fingerprint": "f" * 64,
    "parameter_hash": "e" * 64,
    "scenario_id": "scenario-1",
    "seed": 42,
    "run_id": "b" * 32,
}
BASE_TS = parse_ts_us("2026-02-07T05:00:00.000000Z")

ARRIVAL = ("fp.bus.context.arrival_events.v1", "arrival_events_5B")
ENTITIES = ("fp.bus.context.arrival_entities.v1", "s1_arrival_entities_6B")
ANCHOR_FRAUD = ("fp.bus.context.flow_anchor.fraud.v1", "s3_flow_anchor_with_fraud_6B")
ANCHOR_BASELINE = ("fp.bus.context.flow_anchor.baseline.v1", "s2_flow_anchor_baseline_6B")
TRAFFIC_FRAUD = ("fp.bus.traffic.fraud.v1", "s3_event_stream_with_fraud_6B")
TRAFFIC_BASELINE = ("fp.bus.traffic.baseline.v1", "s2_event_stream_baseline_6B")


def event_id(*parts: object) -> str:
    return hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()


def envelope(event_type: str, payload: dict[str, Any], *, eid: str | None = None, ts_s: float = 0.0,
             pins: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    env: dict[str, Any] = {
        "event_id": eid or event_id(event_type, sorted(payload.items())),
        "event_type": event_type,
        "ts_utc": format_ts_us(BASE_TS + int(ts_s * 1_000_000)),
        "schema_version": "v1",
        "producer": "tests",
        **(PINS if pins is None else pins),
        "payload": payload,
    }
    env.update(extra)
    return env


def context_events(seq: int, *, merchant: str | None = None, flow: str | None = None, ts_s: float | None = None,
                   anchor: tuple[str, str] = ANCHOR_FRAUD, pins: dict[str, Any] | None = None) -> list[tuple[str, dict[str, Any]]]:
    """(topic, envelope) for the arrival, entities and anchor of one arrival."""
    merchant = merchant or f"m-{(seq % 7) + 1}"
    flow = flow or f"flow-{seq}"
    ts = float(seq) if ts_s is None else ts_s
    key = {"merchant_id": merchant, "arrival_seq": seq}
    return [
        (ARRIVAL[0], envelope(ARRIVAL[1], dict(key), eid=f"{seq:064x}", ts_s=ts, pins=pins)),
        (ENTITIES[0], envelope(ENTITIES[1], {**key, "party_id": f"party-{seq}"}, eid=f"{seq + 1000:064x}", ts_s=ts, pins=pins)),
        (anchor[0], envelope(anchor[1], {**key, "flow_id": flow}, eid=f"{seq + 2000:064x}", ts_s=ts, pins=pins)),
    ]


def publish(root: Path, items: list[tuple[str, dict[str, Any]]], *, partitions: int = 2) -> None:
    """Publish (topic, envelope) pairs to a file bus, routed like `ctxplane bus publish`."""
    from collections import defaultdict

    import anyio

    from ctxplane.runtime.bus import FileBus, partition_key_for

    by_topic: dict[str, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
    for topic, env in items:
        by_topic[topic].append((partition_key_for(env, None), env))

    async def go() -> None:
        bus = FileBus(root)
        try:
            for topic, pairs in by_topic.items():
                await bus.publish_many(topic, pairs, partitions=partitions)
        finally:
            await bus.aclose()

    anyio.run(go)


def append_raw(root: Path, topic: str, partition: int, data: bytes) -> None:
    """Append raw bytes to a partition file (junk lines, half-written lines)."""
    path = root / topic / f"partition={partition}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as fh:
        fh.write(data)
