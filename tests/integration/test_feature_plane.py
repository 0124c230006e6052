"""The feature plane end to end: a real `ctxplane run` process over SQLite, asked through the socket.

Covers the feature scenarios end to end, snapshot_hash identity
(docs/protocol.md §get_features), rebuild determinism (docs/operations.md §Rebuild), freshness flags, errors and policy fail-closed.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from ctxplane.contracts.canonical import digest
from ctxplane.contracts.features import default_policy_path
from ctxplane.contracts.timestamps import format_ts_us
from ctxplane.runtime.client import Client
from tests.support.process import CtxplaneProcess, ctxplane, write_config
from tests.support.workload import (
    BASE_TS,
    OTHER_RUN,
    PINS,
    TRAFFIC_BASELINE,
    TRAFFIC_FRAUD,
    envelope,
    event_id,
    publish,
)

Item = tuple[str, dict[str, Any]]
FRAUD, BASELINE = TRAFFIC_FRAUD[0], TRAFFIC_BASELINE[0]
CORE = {"name": "core_features", "version": "v1"}
VELOCITY = {"name": "entity_velocity", "version": "v1"}
WINDOWS = ("1h", "24h", "7d")
GREEN = {"state": "GREEN", "flags": [], "stale_groups": [], "missing_groups": [], "missing_feature_keys": []}


def ts(seconds: float) -> str:
    return format_ts_us(BASE_TS + int(seconds * 1_000_000))


def traffic(n: int, flow: str, ts_s: float, amount: object = None, *, topic: tuple[str, str] = TRAFFIC_FRAUD,
            pins: dict[str, Any] | None = None, event_type: str | None = None, **payload: Any) -> Item:
    body: dict[str, Any] = {"flow_id": flow, **payload}
    if amount is not None:
        body["amount"] = amount
    return topic[0], envelope(event_type or topic[1], body, eid=event_id("traffic", n, flow), ts_s=ts_s, pins=pins)


def core(count: int, amount_sum: float, last: str | None) -> dict[str, dict[str, Any]]:
    return {w: {"event_count": count, "amount_sum": amount_sum, "last_event_ts_utc": last} for w in WINDOWS}


def get_features(client: Client, as_of: str, keys: list[tuple[str, str]], groups: list[dict[str, str]] | None = None,
                 pins: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return client.request({
        "op": "get_features", "request_id": "req-1", "pins": PINS if pins is None else pins, "as_of_time_utc": as_of,
        "feature_keys": [{"key_type": t, "key_id": k} for t, k in keys], "feature_groups": groups or [CORE], **extra})


def snapshot(answer: dict[str, Any]) -> dict[str, Any]:
    assert answer["status"] == "OK", answer
    snap: dict[str, Any] = answer["snapshot"]
    assert snap["snapshot_hash"] == digest({k: v for k, v in snap.items() if k != "snapshot_hash"})
    return snap


def run_once(config: Path, env: dict[str, str] | None = None) -> None:
    result = ctxplane("run", "--config", str(config), "--once", env=env)
    assert result.returncode == 0, result.stderr[-2000:]


def state_digest(config: Path, *flags: str) -> str:
    result = ctxplane("digest", "--config", str(config), *flags)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def sql(config: Path, query: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(config.parent / "store.sqlite")
    try:
        return conn.execute(query).fetchall()
    finally:
        conn.close()


def client(config: Path) -> Client:
    return Client(f"unix:{config.parent / 'q.sock'}", timeout_s=30)  # a hang guard, not a synchronisation


def make_config(directory: Path, **sections: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    return write_config(directory, f"sqlite:///{directory / 'store.sqlite'}", **{"join_plane": {"enabled": False}, **sections})


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return make_config(tmp_path)


def applied_basis(topics: dict[str, dict[int, int]]) -> str:
    """basis_digest (docs/protocol.md §basis) for the given next offsets."""
    return digest({"stream": "ctxplane.features", "topics": {
        t: {str(p): {"next_offset": str(n), "offset_kind": "file_line"} for p, n in sorted(parts.items())}
        for t, parts in sorted(topics.items())}})


# -- feature scenarios ------------------------------------------------------------------------------------

def test_two_events_for_one_flow_count_2_sum_15_and_a_rerun_changes_nothing(config: Path) -> None:
    publish(config.parent / "eb", [traffic(1, "flow-1", 1, 5), traffic(2, "flow-1", 2, "10")], partitions=1)
    run_once(config)
    digest_before = state_digest(config)
    with CtxplaneProcess(config), client(config) as c:
        first = snapshot(get_features(c, ts(2), [("flow_id", "flow-1")]))
        again = get_features(c, ts(2), [("flow_id", "flow-1")])
    assert first["features"] == {"core_features": {"flow_id:flow-1": core(2, 15.0, ts(2))}}
    assert first["eb_offset_basis"] == {
        "stream": "ctxplane.features", "offset_kind": "file_line",
        "offsets": [{"topic": FRAUD, "partition": 0, "offset": "2"}],
        "basis_digest": applied_basis({FRAUD: {0: 2}}), "window_end_utc": ts(2)}
    assert first["freshness"] == GREEN
    assert first["feature_def_policy_rev"]["policy_id"] == "ofp.features.v0"
    assert first["feature_def_policy_rev"]["revision"] == "r1"
    assert (first["pins"], first["as_of_time_utc"], first["feature_groups"]) == (PINS, ts(2), [CORE])
    assert again["request_id"] == "req-1" and again["snapshot"] == first  # the same request: the same snapshot and hash
    # A re-run over the same bus reads nothing new: same state, same counters, same answer.
    run_once(config)
    assert state_digest(config) == digest_before
    assert sql(config, "SELECT name, sum(value) FROM intake_counters GROUP BY name") == [("applied", 2)]
    assert sql(config, "SELECT topic, partition_id, next_offset, watermark_ts_utc FROM checkpoints") == [(FRAUD, 0, "2", ts(2))]


def test_decision_outputs_on_traffic_topics_are_ignored_and_counted(tmp_path: Path) -> None:
    real = traffic(1, "flow-1", 1, 5)
    outputs = [traffic(10 + i, "flow-1", 2, 99, topic=topic, event_type=kind)
               for i, (topic, kind) in enumerate([(TRAFFIC_FRAUD, "decision_response"), (TRAFFIC_FRAUD, "action_intent"),
                                                  (TRAFFIC_BASELINE, "action_outcome")])]
    with_outputs, without = make_config(tmp_path / "with"), make_config(tmp_path / "without")
    publish(with_outputs.parent / "eb", [real, *outputs], partitions=1)
    publish(without.parent / "eb", [real], partitions=1)
    run_once(with_outputs)
    run_once(without)
    assert state_digest(with_outputs) == state_digest(without)  # no state change at all
    assert sql(with_outputs, "SELECT topic, name, value FROM intake_counters ORDER BY topic, name") == [
        (BASELINE, "ignored", 1), (FRAUD, "applied", 1), (FRAUD, "ignored", 2)]
    assert sql(with_outputs, "SELECT count(*) FROM apply_failures") == [(0,)]
    # ... and the checkpoints moved past them.
    assert sql(with_outputs, "SELECT topic, next_offset FROM checkpoints ORDER BY topic") == [(BASELINE, "1"), (FRAUD, "3")]
    assert sql(with_outputs, "SELECT key_type, key_id, amount_units FROM feature_raw") == [("flow_id", "flow-1", 5_000_000)]


# -- snapshot identity --------------------------------------------------------------------------

def test_snapshot_hash_changes_with_as_of_basis_values_and_policy_revision(config: Path, tmp_path: Path) -> None:
    eb = config.parent / "eb"
    publish(eb, [traffic(1, "flow-1", 1, 5), traffic(2, "flow-1", 2, 10), traffic(3, "flow-2", 3, 1)], partitions=1)
    run_once(config)
    keys = [("flow_id", "flow-1")]
    with CtxplaneProcess(config), client(config) as c:
        base = snapshot(get_features(c, ts(3), keys))
        assert snapshot(get_features(c, ts(3), keys))["snapshot_hash"] == base["snapshot_hash"]
        # as_of: same basis, same values, another instant.
        later = snapshot(get_features(c, ts(4), keys, wait_ms=0))
        assert later["features"] == base["features"] and later["eb_offset_basis"] == base["eb_offset_basis"]
        assert later["snapshot_hash"] != base["snapshot_hash"]
        # values: same basis and as_of, another key.
        other_key = snapshot(get_features(c, ts(3), [("flow_id", "flow-2")]))
        assert other_key["eb_offset_basis"] == base["eb_offset_basis"]
        assert other_key["snapshot_hash"] != base["snapshot_hash"]
        # basis: one more event (another flow, after as_of): same values, a new basis.
        publish(eb, [traffic(4, "flow-3", 5, 1)], partitions=1)
        synced = get_features(c, ts(5), keys, wait_ms=10_000, deadline_ms=15_000)  # returns once ts(5) is applied
        assert "STALE_INPUT_BASIS" not in snapshot(synced)["freshness"]["flags"]
        moved = snapshot(get_features(c, ts(3), keys))
        assert moved["features"] == base["features"]
        assert moved["eb_offset_basis"]["offsets"] == [{"topic": FRAUD, "partition": 0, "offset": "4"}]
        assert moved["snapshot_hash"] != base["snapshot_hash"]
    # policy revision: the same definitions under revision r2.
    text = default_policy_path().read_text(encoding="utf-8")
    assert "\nrevision: r1\n" in text
    policy = tmp_path / "features.r2.yaml"
    policy.write_text(text.replace("\nrevision: r1\n", "\nrevision: r2\n"), encoding="utf-8")
    with CtxplaneProcess(config, env={"CTXPLANE__FEATURES__POLICY": str(policy)}), client(config) as c:
        revised = snapshot(get_features(c, ts(3), keys))
    assert revised["feature_def_policy_rev"]["revision"] == "r2"
    assert revised["feature_def_policy_rev"]["content_digest"] != moved["feature_def_policy_rev"]["content_digest"]
    assert (revised["features"], revised["eb_offset_basis"]) == (moved["features"], moved["eb_offset_basis"])
    assert revised["snapshot_hash"] != moved["snapshot_hash"]


def _at(n: int) -> int:
    return (n * 7919) % (3 * 86400)  # scattered over three days, not in time order


LAST = max(_at(n) for n in range(40))  # the watermark after the workload


def _workload() -> list[Item]:
    """Traffic over three days on both topics: several flows and entities, out of order, with re-deliveries."""
    items = []
    for n in range(40):
        t = _at(n)
        topic = TRAFFIC_FRAUD if n % 3 else TRAFFIC_BASELINE
        amount = [n + 0.25, str(n * 3), None, n][n % 4]
        items.append(traffic(n, f"flow-{n % 8}", t, amount, topic=topic, merchant_id=f"m-{n % 3}",
                             instrument_id=f"inst-{n % 5}"))
    return items + items[5:12]  # the bus delivers some events twice


def test_two_rebuilds_from_the_same_bus_give_identical_hashes_and_digests(tmp_path: Path) -> None:
    eb = tmp_path / "eb"
    publish(eb, _workload(), partitions=2)
    one = make_config(tmp_path / "one", bus={"root": str(eb)})
    two = make_config(tmp_path / "two", bus={"root": str(eb)}, ingest={"batch_max_records": 1, "poll_interval_ms": 10})
    run_once(one)
    run_once(two)  # another batching: one record per batch
    assert state_digest(one) == state_digest(two)
    assert state_digest(one, "--ledger") == state_digest(two, "--ledger")
    keys = [("flow_id", f"flow-{i}") for i in range(8)] + [("merchant_id", "m-1"), ("instrument_id", "inst-2")]
    answers = []
    for config in (one, two):
        with CtxplaneProcess(config), client(config) as c:
            answers.append([snapshot(get_features(c, ts(s), keys, [CORE, VELOCITY])) for s in (86400, 2 * 86400 + 1, LAST)])
    assert answers[0] == answers[1]
    first = answers[0][2]
    lines = {(t, p): (eb / t / f"partition={p}.jsonl").read_bytes().count(b"\n") for t in (FRAUD, BASELINE) for p in (0, 1)}
    assert first["eb_offset_basis"]["offsets"] == [
        {"topic": t, "partition": p, "offset": str(n)} for (t, p), n in sorted(lines.items())]
    assert sum(lines.values()) == 47
    assert first["freshness"] == GREEN
    # flow-0 has events 0, 8, 16, 24, 32 (each at (n * 7919) % 259200 s): all within the 7d window.
    flow0 = first["features"]["core_features"]["flow_id:flow-0"]["7d"]
    amounts = {0: 0.25, 8: 8.25, 16: 16.25, 24: 24.25, 32: 32.25}
    assert flow0 == {"event_count": 5, "amount_sum": sum(amounts.values()),
                     "last_event_ts_utc": ts(max(_at(n) for n in amounts))}
    assert len({a["snapshot_hash"] for a in answers[0]}) == 3


# -- policy fail-closed ------------------------------------------------------------------------

@pytest.mark.parametrize(("change", "named"), [
    pytest.param(lambda text: text.replace("\nrevision: r1\n", "\n"), ["revision"], id="missing-revision"),
    pytest.param(lambda text: text.replace("amount_min, amount_max,", "amount_min, amount_p99, amount_max,"),
                 ["aggregations", "amount_p99"], id="unknown-aggregation"),
])
def test_an_invalid_policy_refuses_to_start_with_one_line(tmp_path: Path, change: Any, named: list[str]) -> None:
    text = default_policy_path().read_text(encoding="utf-8")
    policy = tmp_path / "policy.yaml"
    policy.write_text(change(text), encoding="utf-8")
    assert policy.read_text(encoding="utf-8") != text
    config = make_config(tmp_path / "cfg", features={"policy": str(policy)})
    result = ctxplane("run", "--config", str(config), timeout=30)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert str(policy) in lines[0] and all(word in lines[0] for word in named), lines[0]
    assert "Traceback" not in result.stderr


# -- freshness flags and errors ----------------------------------------------------------------

def test_freshness_flags_missing_state_and_other_runs(config: Path) -> None:
    other_pins = {**PINS, "platform_run_id": OTHER_RUN}
    publish(config.parent / "eb", [
        traffic(1, "flow-1", 1, 5), traffic(2, "flow-1", 2, 10),
        traffic(3, "flow-1", 3, 1000, pins=other_pins), traffic(4, "flow-9", 3, 7, pins=other_pins),
    ], partitions=1)
    run_once(config)
    with CtxplaneProcess(config), client(config) as c:
        mine = snapshot(get_features(c, ts(3), [("flow_id", "flow-1")]))
        assert mine["features"]["core_features"]["flow_id:flow-1"] == core(2, 15.0, ts(2))  # not the other run's 1000
        assert mine["freshness"] == GREEN
        theirs = snapshot(get_features(c, ts(3), [("flow_id", "flow-1"), ("flow_id", "flow-9")], pins=other_pins))
        assert theirs["features"]["core_features"] == {"flow_id:flow-1": core(1, 1000.0, ts(3)), "flow_id:flow-9": core(1, 7.0, ts(3))}
        # Another run's key: no data from that run.
        foreign = snapshot(get_features(c, ts(3), [("flow_id", "flow-9")]))
        assert foreign["features"]["core_features"] == {"flow_id:flow-9": core(0, 0.0, None)}
        assert foreign["freshness"] == {**GREEN, "state": "AMBER", "flags": ["MISSING_FEATURE_STATE"],
                                        "missing_feature_keys": [{"key_type": "flow_id", "key_id": "flow-9"}]}
        scenario = snapshot(get_features(c, ts(3), [("flow_id", "flow-1")], pins={**PINS, "scenario_run_id": "c" * 32}))
        assert scenario["freshness"]["flags"] == ["MISSING_FEATURE_STATE"]
        assert scenario["features"]["core_features"]["flow_id:flow-1"] == core(0, 0.0, None)
        # An unseen key next to a seen one: AMBER, only the unseen key listed.
        unseen = snapshot(get_features(c, ts(3), [("flow_id", "flow-1"), ("flow_id", "flow-404")]))
        assert unseen["freshness"] == {**GREEN, "state": "AMBER", "flags": ["MISSING_FEATURE_STATE"],
                                       "missing_feature_keys": [{"key_type": "flow_id", "key_id": "flow-404"}]}
        # A key type no requested group serves is missing too.
        odd = snapshot(get_features(c, ts(3), [("flow_id", "flow-1"), ("device_id", "d-1")]))
        assert odd["freshness"]["missing_feature_keys"] == [{"key_type": "device_id", "key_id": "d-1"}]
        assert odd["features"] == {"core_features": {"flow_id:flow-1": core(2, 15.0, ts(2))}}
        # Unknown group, or a known name at another version: RED with MISSING_FEATURE_GROUP.
        red = snapshot(get_features(c, ts(3), [("flow_id", "flow-1")],
                                    [CORE, {"name": "nope", "version": "v1"}, {"name": "core_features", "version": "v2"}]))
        assert red["freshness"] == {**GREEN, "state": "RED", "flags": ["MISSING_FEATURE_GROUP"], "missing_groups": [
            {"name": "core_features", "version": "v2"}, {"name": "nope", "version": "v1"}]}
        assert red["features"] == {"core_features": {"flow_id:flow-1": core(2, 15.0, ts(2))}}
        # as_of ahead of the watermark: STALE_INPUT_BASIS, the served values are what is applied.
        stale = snapshot(get_features(c, ts(60), [("flow_id", "flow-1")], [CORE, VELOCITY]))
        assert stale["freshness"] == {**GREEN, "state": "AMBER", "flags": ["STALE_INPUT_BASIS"],
                                      "stale_groups": [CORE, VELOCITY]}
        assert stale["eb_offset_basis"]["window_end_utc"] == ts(3)
        assert stale["features"]["core_features"]["flow_id:flow-1"] == core(2, 15.0, ts(2))


def test_invalid_requests_are_errors_that_are_not_retryable(config: Path) -> None:
    publish(config.parent / "eb", [traffic(1, "flow-1", 1, 5)], partitions=1)
    run_once(config)
    good: dict[str, Any] = {"op": "get_features", "request_id": "bad", "pins": PINS, "as_of_time_utc": ts(1),
                            "feature_keys": [{"key_type": "flow_id", "key_id": "flow-1"}], "feature_groups": [CORE]}
    no_fingerprint = {k: v for k, v in PINS.items() if k != "manifest_fingerprint"}
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"pins": None}, "MISSING_PINS", "pins"),
        ({"pins": {}}, "MISSING_PINS", "pins"),
        ({"pins": no_fingerprint}, "MISSING_PINS", "manifest_fingerprint"),
        ({"pins": {**PINS, "seed": -1}}, "INVALID_REQUEST", "seed"),
        ({"as_of_time_utc": None}, "INVALID_REQUEST", "as_of_time_utc"),
        ({"as_of_time_utc": "2026-02-07 05:00:00"}, "INVALID_REQUEST", "as_of_time_utc"),
        ({"feature_keys": []}, "INVALID_REQUEST", "feature_keys"),
        ({"feature_keys": [{"key_type": "flow_id"}]}, "INVALID_REQUEST", "feature_keys[0]"),
        ({"feature_groups": [{"name": "core_features"}]}, "INVALID_REQUEST", "feature_groups[0]"),
        ({"graph_resolution_mode": "always"}, "INVALID_REQUEST", "graph_resolution_mode"),
        ({"wait_ms": -1}, "INVALID_REQUEST", "wait_ms"),
    ]
    with CtxplaneProcess(config), client(config) as c:
        for change, code, detail in cases:
            answer = c.request({k: v for k, v in {**good, **change}.items() if v is not None})
            assert (answer["status"], answer["code"], answer["retryable"], answer["request_id"]) == (
                "ERROR", code, False, "bad"), (change, answer)
            assert detail in answer["detail"], (change, answer)
        ieg = c.request({**good, "graph_resolution_mode": "require_ieg"})
        assert (ieg["status"], ieg["code"], ieg["retryable"]) == ("ERROR", "UNAVAILABLE", True)
        # The other modes answer normally.
        for mode in ("none", "resolve_if_needed"):
            assert snapshot(c.request({**good, "graph_resolution_mode": mode}))["freshness"] == GREEN


def test_wait_ms_returns_as_soon_as_a_commit_moves_the_watermark_past_as_of(config: Path) -> None:
    eb = config.parent / "eb"
    publish(eb, [traffic(1, "flow-1", 1, 5), traffic(2, "flow-1", 2, 10)], partitions=1)
    run_once(config)
    with CtxplaneProcess(config), client(config) as c:
        ready = snapshot(get_features(c, ts(2), [("flow_id", "flow-1")]))
        assert ready["features"]["core_features"]["flow_id:flow-1"] == core(2, 15.0, ts(2))
        # Nothing arrives: the request waits out wait_ms and answers STALE_INPUT_BASIS.
        started = time.monotonic()
        stale = snapshot(get_features(c, ts(10), [("flow_id", "flow-1")], wait_ms=300))
        assert time.monotonic() - started >= 0.3
        assert stale["freshness"]["flags"] == ["STALE_INPUT_BASIS"]
        # Ask first, publish while the request waits: the answer comes with the commit, not after wait_ms.
        publisher = threading.Timer(0.2, lambda: publish(eb, [traffic(3, "flow-1", 10, 7)], partitions=1))  # sync-ok: publishes while the request waits
        started = time.monotonic()
        publisher.start()
        fresh = snapshot(get_features(c, ts(10), [("flow_id", "flow-1")], wait_ms=20_000, deadline_ms=25_000))
        elapsed = time.monotonic() - started
        publisher.join()
    assert fresh["freshness"] == GREEN
    assert fresh["features"]["core_features"]["flow_id:flow-1"] == core(3, 22.0, ts(10))
    assert fresh["eb_offset_basis"]["window_end_utc"] == ts(10)
    assert elapsed < 10, elapsed  # woken by the commit, long before the 20 s wait_ms
