"""The demo workload generator: canonical envelopes (docs/events.md §The envelope), deterministic per seed, with
the anomalies its expectations announce."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

from ctxplane.actors.operate.demo_workload import (
    DEMO_TOPICS,
    TOPIC_ANCHOR_BASELINE,
    TOPIC_ANCHOR_FRAUD,
    TOPIC_ARRIVAL_ENTITIES,
    TOPIC_ARRIVAL_EVENTS,
    TOPIC_TRAFFIC_BASELINE,
    TOPIC_TRAFFIC_FRAUD,
    demo_expectations,
    demo_pins,
    generate,
    write_demo_bus,
    write_demo_bus_async,
)
from ctxplane.runtime.bus import FileBus, partition_for

# docs/events.md §The envelope, checked here independently of contracts/.
HEX64 = re.compile(r"^[a-f0-9]{64}$")
HEX32 = re.compile(r"^[a-f0-9]{32}$")
TS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")
PLATFORM_RUN = re.compile(r"^platform_[0-9]{8}T[0-9]{6}Z$")
REQUIRED = {"event_id", "event_type", "ts_utc", "manifest_fingerprint"}
OPTIONAL = {
    "parameter_hash",
    "seed",
    "scenario_id",
    "run_id",
    "platform_run_id",
    "scenario_run_id",
    "emitted_at_utc",
    "schema_version",
    "trace_id",
    "span_id",
    "parent_event_id",
    "producer",
    "payload",
}
PINS = {
    "platform_run_id",
    "scenario_run_id",
    "manifest_fingerprint",
    "parameter_hash",
    "scenario_id",
    "seed",
    "run_id",
}
TOPIC_TYPES = {
    TOPIC_ARRIVAL_EVENTS: {"arrival_events_5B"},
    TOPIC_ARRIVAL_ENTITIES: {"s1_arrival_entities_6B"},
    TOPIC_ANCHOR_FRAUD: {"s3_flow_anchor_with_fraud_6B"},
    TOPIC_ANCHOR_BASELINE: {"s2_flow_anchor_baseline_6B"},
    TOPIC_TRAFFIC_FRAUD: {"s3_event_stream_with_fraud_6B"},
    TOPIC_TRAFFIC_BASELINE: {"s2_event_stream_baseline_6B"},
}
ENTITY_FIELDS = {"party_id", "account_id", "instrument_id", "device_id", "ip_id"}
PAYLOAD_FIELDS = {
    TOPIC_ARRIVAL_EVENTS: {"merchant_id", "arrival_seq", "amount_minor", "currency", "site_id"},
    TOPIC_ARRIVAL_ENTITIES: {"merchant_id", "arrival_seq"} | ENTITY_FIELDS,
    TOPIC_ANCHOR_FRAUD: {"merchant_id", "arrival_seq", "flow_id", "amount"} | ENTITY_FIELDS,
    TOPIC_ANCHOR_BASELINE: {"merchant_id", "arrival_seq", "flow_id", "amount"} | ENTITY_FIELDS,
    TOPIC_TRAFFIC_FRAUD: {
        "flow_id",
        "event_seq",
        "event_kind",
        "amount",
        "merchant_id",
        "instrument_id",
        "account_id",
        "device_id",
        "ip_id",
    },
}
PAYLOAD_FIELDS[TOPIC_TRAFFIC_BASELINE] = PAYLOAD_FIELDS[TOPIC_TRAFFIC_FRAUD]


def check_envelope(envelope: dict[str, Any]) -> None:
    """A strict check of the canonical envelope formats, plus what the demo promises."""
    assert set(envelope) >= REQUIRED, envelope
    assert set(envelope) <= REQUIRED | OPTIONAL, set(envelope) - REQUIRED - OPTIONAL
    assert set(envelope) >= PINS
    assert HEX64.match(envelope["event_id"])
    assert isinstance(envelope["event_type"], str)
    assert 1 <= len(envelope["event_type"]) <= 256
    assert TS.match(envelope["ts_utc"])
    assert TS.match(envelope["emitted_at_utc"])
    assert HEX64.match(envelope["manifest_fingerprint"])
    assert HEX64.match(envelope["parameter_hash"])
    assert HEX32.match(envelope["run_id"])
    assert HEX32.match(envelope["scenario_run_id"])
    assert PLATFORM_RUN.match(envelope["platform_run_id"])
    seed = envelope["seed"]
    assert isinstance(seed, int)
    assert not isinstance(seed, bool)
    assert 0 <= seed <= 2**64 - 1
    assert isinstance(envelope["scenario_id"], str)
    assert 1 <= len(envelope["scenario_id"]) <= 256
    assert envelope["schema_version"] == "v1"
    assert envelope["producer"] == "ctxplane.demo"
    assert isinstance(envelope["payload"], dict)


def parse_ts(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ")


def all_events(workload: dict[str, list[dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    return [(topic, e) for topic, envelopes in workload.items() for e in envelopes]


@pytest.mark.parametrize("flows", [1, 3, 12, 50])
def test_every_envelope_is_canonical(flows: int) -> None:
    workload = generate(flows, conflicts=min(1, flows), incomplete=min(2, flows - min(1, flows)))
    assert tuple(workload) == DEMO_TOPICS
    pins = demo_pins()
    for topic, envelope in all_events(workload):
        check_envelope(envelope)
        assert envelope["event_type"] in TOPIC_TYPES[topic]
        assert set(envelope["payload"]) == PAYLOAD_FIELDS[topic], topic
        assert {k: envelope[k] for k in PINS} == pins
        assert re.fullmatch(r"m-[1-7]", envelope["payload"]["merchant_id"])
        # round-trips through the bus encoder unchanged
        assert orjson.loads(orjson.dumps(envelope)) == envelope


def test_event_ids_are_unique_and_timestamps_one_second_per_flow() -> None:
    workload = generate(40)
    ids = [e["event_id"] for _, e in all_events(workload)]
    assert len(ids) == len(set(ids))
    start = parse_ts("2026-02-07T05:00:00.000000Z")
    for envelope in workload[TOPIC_ARRIVAL_ENTITIES]:
        i = envelope["payload"]["arrival_seq"]
        assert parse_ts(envelope["ts_utc"]) == start + timedelta(seconds=i)
    assert workload[TOPIC_ARRIVAL_ENTITIES][0]["ts_utc"] == "2026-02-07T05:00:01.000000Z"
    for topic in DEMO_TOPICS:
        stamps = [parse_ts(e["ts_utc"]) for e in workload[topic]]
        assert stamps == sorted(stamps), topic


def test_flow_shapes_traffic_and_fraud_split() -> None:
    workload = generate(20, conflicts=0, incomplete=0)
    fraud = {e["payload"]["flow_id"] for e in workload[TOPIC_ANCHOR_FRAUD]}
    assert fraud == {"flow-5", "flow-10", "flow-15", "flow-20"}
    assert {e["payload"]["flow_id"] for e in workload[TOPIC_TRAFFIC_FRAUD]} == fraud
    for topic in (TOPIC_TRAFFIC_FRAUD, TOPIC_TRAFFIC_BASELINE):
        per_flow: dict[str, list[tuple[int, str]]] = defaultdict(list)
        for envelope in workload[topic]:
            payload = envelope["payload"]
            assert isinstance(payload["amount"], float | int)
            assert payload["amount"] > 0
            per_flow[payload["flow_id"]].append((payload["event_seq"], payload["event_kind"]))
        assert all(v == [(0, "AUTH_REQUEST"), (1, "AUTH_RESPONSE")] for v in per_flow.values())
    for i, envelope in enumerate(workload[TOPIC_ARRIVAL_EVENTS], 1):
        assert envelope["payload"]["merchant_id"] == f"m-{(i % 7) + 1}"
        assert envelope["payload"]["arrival_seq"] == i
    # Entities repeat across flows, so velocity features see several events per key.
    traffic = workload[TOPIC_TRAFFIC_BASELINE] + workload[TOPIC_TRAFFIC_FRAUD]
    for field in ("instrument_id", "account_id", "device_id", "ip_id", "merchant_id"):
        flows_per_key: dict[str, set[str]] = defaultdict(set)
        for envelope in traffic:
            flows_per_key[envelope["payload"][field]].add(envelope["payload"]["flow_id"])
        assert max(len(v) for v in flows_per_key.values()) > 1, field


def test_anomalies_match_the_expectations() -> None:
    workload = generate(30, conflicts=2, incomplete=3)
    expected = demo_expectations(30, conflicts=2, incomplete=3)
    anchors = workload[TOPIC_ANCHOR_FRAUD] + workload[TOPIC_ANCHOR_BASELINE]
    arrivals = {
        (e["payload"]["merchant_id"], e["payload"]["arrival_seq"])
        for e in workload[TOPIC_ARRIVAL_EVENTS]
    }
    flows_by_key: dict[tuple[str, int], set[str]] = defaultdict(set)
    for envelope in anchors:
        p = envelope["payload"]
        flows_by_key[(p["merchant_id"], p["arrival_seq"])].add(p["flow_id"])
    key_of = {flow: key for key, flows in flows_by_key.items() for flow in flows}

    assert expected.missing_join_frame == ("flow-28", "flow-29", "flow-30")
    assert expected.conflict == ("flow-26", "flow-26-dup", "flow-27", "flow-27-dup")
    assert expected.ready == tuple(f"flow-{i}" for i in range(1, 26))
    assert expected.missing_binding == ("flow-31",)
    for flow in expected.ready:
        assert key_of[flow] in arrivals
        assert flows_by_key[key_of[flow]] == {flow}
    for flow in expected.missing_join_frame:
        assert key_of[flow] not in arrivals  # anchored, but no arrival event
    for flow in expected.conflict:
        assert len(flows_by_key[key_of[flow]]) == 2  # two flow ids claim one join key
    assert "flow-31" not in key_of
    assert set(expected.ready) | set(expected.missing_join_frame) | set(expected.conflict) == set(
        key_of
    )
    assert {t: len(v) for t, v in workload.items()} == dict(expected.counts)
    assert expected.pins == demo_pins()


def test_counts_with_a_fraud_flow_in_conflict() -> None:
    workload = generate(10, conflicts=1, incomplete=0)  # flow 10 is fraud and in conflict
    expected = demo_expectations(10, conflicts=1, incomplete=0)
    assert expected.conflict == ("flow-10", "flow-10-dup")
    assert {t: len(v) for t, v in workload.items()} == dict(expected.counts)
    assert expected.counts[TOPIC_ANCHOR_FRAUD] == 3


def test_deterministic_per_seed() -> None:
    assert generate(25) == generate(25)
    assert generate(25, seed=8) == generate(25, seed=8)
    one, other = generate(25, seed=7), generate(25, seed=8)
    assert one != other
    amounts = [e["payload"]["amount_minor"] for e in one[TOPIC_ARRIVAL_EVENTS]]
    assert amounts != [e["payload"]["amount_minor"] for e in other[TOPIC_ARRIVAL_EVENTS]]
    assert one[TOPIC_ARRIVAL_EVENTS][0]["seed"] == 7
    assert (
        other[TOPIC_ARRIVAL_EVENTS][0]["manifest_fingerprint"]
        != one[TOPIC_ARRIVAL_EVENTS][0]["manifest_fingerprint"]
    )
    # another run id gives other pins and other event ids
    moved = generate(25, platform_run_id="platform_20260208T000000Z")
    assert moved[TOPIC_ARRIVAL_EVENTS][0]["platform_run_id"] == "platform_20260208T000000Z"
    assert moved[TOPIC_ARRIVAL_EVENTS][0]["event_id"] != one[TOPIC_ARRIVAL_EVENTS][0]["event_id"]


def test_start_shifts_every_timestamp() -> None:
    workload = generate(3, conflicts=0, incomplete=0, start="2026-03-01T10:00:00.250000Z")
    assert workload[TOPIC_ARRIVAL_EVENTS][0]["ts_utc"] == "2026-03-01T10:00:01.250000Z"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"flows": 0}, "flows must be >= 1"),
        ({"flows": 3, "conflicts": 2, "incomplete": 2}, "must not exceed flows"),
        ({"flows": 3, "conflicts": -1}, "must be >= 0"),
        ({"flows": 3, "start": "2026-02-07T05:00:00Z"}, "start must look like"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generate(**kwargs)


def test_write_demo_bus_publishes_everything_routed_by_merchant(tmp_path: Path) -> None:
    counts = write_demo_bus(tmp_path, 30, partitions=2)
    workload = generate(30)
    assert counts == {topic: len(v) for topic, v in workload.items()}

    async def read_back() -> dict[str, list[tuple[int, dict[str, Any]]]]:
        out: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        async with FileBus(tmp_path) as bus:
            for topic in DEMO_TOPICS:
                assert await bus.list_partitions(topic) == [0, 1]
                out[topic] = []
                for partition in (0, 1):
                    result = await bus.read(topic, partition, None, 10_000, 1 << 30)
                    for record in result.records:
                        line = orjson.loads(record.raw)
                        out[topic].append((partition, line))
        return out

    on_bus = anyio.run(read_back)
    for topic, envelopes in workload.items():
        lines = on_bus[topic]
        by_id = {line["payload"]["event_id"]: line["payload"] for _, line in lines}
        assert by_id == {e["event_id"]: e for e in envelopes}
        for partition, line in lines:
            merchant = line["payload"]["payload"]["merchant_id"]
            assert line["partition_key"] == merchant
            assert partition == partition_for(merchant, 2)
        # Within a partition, publish order (= timestamp order) is kept.
        for partition in (0, 1):
            stamps = [line["payload"]["ts_utc"] for p, line in lines if p == partition]
            assert stamps == sorted(stamps)
    assert Counter(p for lines in on_bus.values() for p, _ in lines).keys() == {0, 1}


async def test_write_demo_bus_async_inside_a_running_loop(tmp_path: Path) -> None:
    counts = await write_demo_bus_async(tmp_path, 5, partitions=1, conflicts=0, incomplete=0)
    assert counts[TOPIC_ARRIVAL_EVENTS] == 5
    async with FileBus(tmp_path) as bus:
        assert await bus.end_position(TOPIC_ARRIVAL_EVENTS, 0) == "5"
