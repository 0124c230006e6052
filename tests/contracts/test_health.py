"""Health rules: each signal turns AMBER and RED at its thresholds; overrides; the replay advisory."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from ctxplane.contracts.health import (
    SIGNALS,
    CounterWindow,
    HealthSignals,
    counted_since,
    evaluate_health,
    load_health_policy,
    parse_ack_request,
)
from ctxplane.runtime.exceptions import ConfigError

POLICY = load_health_policy(env={})
QUIET = HealthSignals(watermark_age_s=1.0, checkpoint_age_s=0.0, partitions=2)

COUNTERS = {
    "join_misses": "JOIN_MISSES", "binding_conflicts": "BINDING_CONFLICTS", "apply_failures_hard": "APPLY_FAILURES",
    "missing_features": "MISSING_FEATURES", "snapshot_failures": "SNAPSHOT_FAILURES",
    "mailbox_saturation": "MAILBOX_SATURATION", "actor_restarts": "ACTOR_RESTARTS",
}


def test_quiet_is_green() -> None:
    assert evaluate_health(QUIET, POLICY)["state"] == "GREEN"


@pytest.mark.parametrize("signal", sorted(COUNTERS))
def test_each_counter_turns_amber_then_red_at_its_thresholds(signal: str) -> None:
    t = POLICY.thresholds[signal]
    kind = float if signal == "mailbox_saturation" else int
    below = replace(QUIET, **{signal: kind(t.amber) - (0.01 if kind is float else 1)})
    at_amber = replace(QUIET, **{signal: kind(t.amber)})
    at_red = replace(QUIET, **{signal: kind(t.red)})
    assert evaluate_health(below, POLICY)["state"] == "GREEN"
    amber = evaluate_health(at_amber, POLICY)
    assert (amber["state"], amber["reasons"]) == ("AMBER", [f"{COUNTERS[signal]}_AMBER"])
    red = evaluate_health(at_red, POLICY)
    assert (red["state"], red["reasons"]) == ("RED", [f"{COUNTERS[signal]}_RED"])


def test_checkpoint_age() -> None:
    t = POLICY.thresholds["checkpoint_age_s"]
    assert evaluate_health(replace(QUIET, checkpoint_age_s=t.amber), POLICY)["reasons"] == ["CHECKPOINT_OLD"]
    red = evaluate_health(replace(QUIET, checkpoint_age_s=t.red), POLICY)
    assert (red["state"], red["reasons"]) == ("RED", ["CHECKPOINT_TOO_OLD"])


def test_watermark_age_and_the_replay_advisory() -> None:
    t = POLICY.thresholds["watermark_age_s"]
    assert evaluate_health(replace(QUIET, watermark_age_s=t.amber), POLICY)["reasons"] == ["WATERMARK_OLD"]
    # Historical timestamps, fresh checkpoints, nothing else wrong: a replay, AMBER, nobody is paged.
    replay = evaluate_health(replace(QUIET, watermark_age_s=10 * 365 * 86400.0), POLICY)
    assert (replay["state"], replay["reasons"]) == ("AMBER", ["WATERMARK_REPLAY_ADVISORY"])
    # The same old watermark with stalled checkpoints is an outage.
    stalled = evaluate_health(replace(QUIET, watermark_age_s=t.red, checkpoint_age_s=POLICY.thresholds["checkpoint_age_s"].red), POLICY)
    assert stalled["state"] == "RED" and set(stalled["reasons"]) == {"CHECKPOINT_TOO_OLD", "WATERMARK_TOO_OLD"}
    assert evaluate_health(replace(QUIET, watermark_age_s=None), POLICY)["reasons"] == ["WATERMARK_MISSING"]


def test_store_unavailable_is_red() -> None:
    health = evaluate_health(replace(QUIET, store_available=False), POLICY)
    assert (health["state"], health["reasons"]) == ("RED", ["STORE_UNAVAILABLE"])


def test_env_overrides_apply() -> None:
    policy = load_health_policy(env={"CTXPLANE_HEALTH_JOIN_MISSES_AMBER": "777", "CTXPLANE_HEALTH_JOIN_MISSES_RED": "999"})
    assert (policy.thresholds["join_misses"].amber, policy.thresholds["join_misses"].red) == (777, 999)
    assert evaluate_health(replace(QUIET, join_misses=776), policy)["state"] == "GREEN"
    assert evaluate_health(replace(QUIET, join_misses=999), policy)["state"] == "RED"


@pytest.mark.parametrize(("env", "message"), [
    ({"CTXPLANE_HEALTH_NOPE_RED": "1"}, "CTXPLANE_HEALTH_NOPE_RED"),
    ({"CTXPLANE_HEALTH_JOIN_MISSES_RED": "many"}, "not a number"),
    ({"CTXPLANE_HEALTH_JOIN_MISSES_RED": "0.5"}, "must be >= amber"),
])
def test_bad_overrides_fail_closed(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_health_policy(env=env)


def test_policy_file_must_name_every_signal(tmp_path: Path) -> None:
    bad = tmp_path / "p.yaml"
    bad.write_text("policy_id: x\nrevision: r1\nthresholds:\n  join_misses: {amber: 1, red: 2}\n")
    with pytest.raises(ConfigError, match="missing threshold"):
        load_health_policy(bad, env={})
    assert len(POLICY.thresholds) == len(SIGNALS)


# -- health recovers: the window, acknowledgements, counter resets --------------------------------


def test_the_policy_has_a_window_and_it_can_be_overridden() -> None:
    assert POLICY.window_s == 900 and POLICY.revision == "r2"
    assert load_health_policy(env={"CTXPLANE_HEALTH_WINDOW_S": "60"}).window_s == 60
    with pytest.raises(ConfigError, match="CTXPLANE_HEALTH_WINDOW_S"):
        load_health_policy(env={"CTXPLANE_HEALTH_WINDOW_S": "soon"})
    with pytest.raises(ConfigError, match="window_s"):
        load_health_policy(env={"CTXPLANE_HEALTH_WINDOW_S": "0"})


def test_counted_since_is_the_window_start_or_a_later_acknowledgement() -> None:
    assert counted_since(1000.0, 900.0, None) == 100.0
    assert counted_since(1000.0, 900.0, 50.0) == 100.0  # an old ack: the window decides
    assert counted_since(1000.0, 900.0, 400.0) == 400.0


def test_a_counter_window_counts_what_happened_after_an_instant() -> None:
    w = CounterWindow()
    w.record(0.0, {"restarts": 0}, keep_s=100)
    w.record(10.0, {"restarts": 3}, keep_s=100)
    w.record(20.0, {"restarts": 5}, keep_s=100)
    assert w.count_since(-1.0) == {"restarts": 5}
    assert w.count_since(10.0) == {"restarts": 2}  # the 3 at t=10 are at or before the instant
    assert w.count_since(15.0) == {"restarts": 2}
    assert w.count_since(20.0) == {"restarts": 0}
    # Time passes with no change: one sample is kept, and the window slides past the burst.
    w.record(500.0, {"restarts": 5}, keep_s=100)
    assert w.count_since(400.0) == {"restarts": 0}


def test_a_counter_window_carries_a_counter_reset_and_stays_bounded() -> None:
    w = CounterWindow()
    w.record(0.0, {"restarts": 4}, keep_s=10)
    w.record(1.0, {"restarts": 0}, keep_s=10)  # the counter started again from zero
    w.record(2.0, {"restarts": 2}, keep_s=10)
    assert w.count_since(0.5) == {"restarts": 2}
    assert w.count_since(-1.0) == {"restarts": 6}
    for t in range(3, 1000):
        w.record(float(t), {"restarts": t}, keep_s=10)
    assert len(w._samples) <= 12
    assert w.count_since(989.0) == {"restarts": 10}


def test_ack_requests_name_who_and_why() -> None:
    assert parse_ack_request({"by": " alice ", "reason": "drill"}) == ("alice", "drill")
    assert "by" in parse_ack_request({"reason": "drill"})  # type: ignore[operator]
    assert "reason" in parse_ack_request({"by": "alice", "reason": ""})  # type: ignore[operator]
    assert "at most" in parse_ack_request({"by": "alice", "reason": "x" * 501})  # type: ignore[operator]
