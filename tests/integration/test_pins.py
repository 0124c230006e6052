"""One pin rule for both planes, through a real `ctxplane run` and the socket.

Every pin a request carries must equal the stored pins of what is served, or the answer is a
fail-closed ``PINS_MISMATCH`` with no values; a required pin the request omits is ``MISSING_PINS``;
``run_id`` (declared optional) may be omitted. Once, ``get_features`` with another ``run_id``,
``seed``, ``parameter_hash`` or ``manifest_fingerprint`` returned the real run's values labelled
with the caller's pins, while the join plane answered ``CONFLICT``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctxplane.contracts.envelope import PIN_FIELDS
from ctxplane.runtime.client import Client
from tests.support.process import CtxplaneProcess, ctxplane, write_config
from tests.support.workload import PINS, TRAFFIC_FRAUD, context_events, envelope, event_id, publish

NO_RUN_ID = {k: v for k, v in PINS.items() if k != "run_id"}
# A scenario whose events carry no run_id, and one whose events carry two pins sets (two seeds).
LEGACY = {**NO_RUN_ID, "scenario_run_id": "d" * 32}
MIXED = {**PINS, "scenario_run_id": "c" * 32}
# Another valid value for each pin.
OTHER: dict[str, Any] = {
    "platform_run_id": "platform_20260208T000000Z", "scenario_run_id": "9" * 32, "manifest_fingerprint": "1" * 64,
    "parameter_hash": "0" * 64, "scenario_id": "scenario-2", "seed": 43, "run_id": "c" * 32,
}
CORE = {"name": "core_features", "version": "v1"}
KEY_1 = {"merchant_id": "m-2", "arrival_seq": 1}  # context_events(1)'s frame key


def _traffic(n: int, flow: str, pins: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return TRAFFIC_FRAUD[0], envelope(TRAFFIC_FRAUD[1], {"flow_id": flow, "amount": 5}, eid=event_id("t", n, flow),
                                      ts_s=n, pins=pins)


@pytest.fixture
def config(tmp_path: Path, store_dsn: str) -> Path:
    config = write_config(tmp_path, store_dsn)
    publish(tmp_path / "eb", [
        *context_events(1), _traffic(1, "flow-1", PINS), _traffic(2, "flow-1", PINS),
        *context_events(2, pins=LEGACY), _traffic(3, "flow-2", LEGACY),
        _traffic(4, "flow-3", MIXED), _traffic(5, "flow-3", {**MIXED, "seed": 43}),
    ])
    result = ctxplane("run", "--config", str(config), "--once")
    assert result.returncode == 0, result.stderr[-2000:]
    return config


def _client(config: Path) -> Client:
    return Client(f"unix:{config.parent / 'q.sock'}", timeout_s=30)  # a hang guard, not a synchronisation


def _features(c: Client, pins: dict[str, Any], flow: str = "flow-1") -> dict[str, Any]:
    return c.request({"op": "get_features", "pins": pins, "as_of_time_utc": "2026-02-07T05:00:05.000000Z",
                      "feature_keys": [{"key_type": "flow_id", "key_id": flow}], "feature_groups": [CORE]})


def _resolve(c: Client, pins: dict[str, Any], flow: str = "flow-1") -> dict[str, Any]:
    return c.request({"op": "resolve_flow_binding", "pins": pins, "flow_id": flow})


def _fetch(c: Client, pins: dict[str, Any], key: dict[str, Any] = KEY_1) -> dict[str, Any]:
    return c.request({"op": "fetch_join_frame", "pins": pins, "join_frame_key": key})


def _count(answer: dict[str, Any], flow: str = "flow-1") -> int:
    assert answer["status"] == "OK", answer
    return answer["snapshot"]["features"]["core_features"][f"flow_id:{flow}"]["1h"]["event_count"]  # type: ignore[no-any-return]


def _refused(answer: dict[str, Any], *pins: str) -> None:
    """A fail-closed PINS_MISMATCH answer of either plane, naming ``pins``, carrying no value."""
    if "reason_codes" in answer:  # join plane
        assert (answer["status"], answer["reason_codes"]) == ("CONFLICT", ["PINS_MISMATCH"]), answer
        assert not {"flow_binding", "join_frame", "context_refs", "evidence_refs"} & answer.keys(), answer
    else:
        assert (answer["status"], answer["code"], answer["retryable"]) == ("ERROR", "PINS_MISMATCH", False), answer
        assert "snapshot" not in answer and all(pin in answer["detail"] for pin in pins), answer


def test_every_pin_the_request_carries_must_equal_the_stored_pins_on_both_planes(config: Path) -> None:
    with CtxplaneProcess(config), _client(config) as c:
        assert _count(_features(c, PINS)) == 2
        assert _resolve(c, PINS)["status"] == "READY" and _fetch(c, PINS)["status"] == "READY"
        for pin in ("run_id", "seed", "parameter_hash", "manifest_fingerprint", "scenario_id"):
            wrong = {**PINS, pin: OTHER[pin]}
            _refused(_features(c, wrong), pin)
            _refused(_resolve(c, wrong))
            _refused(_fetch(c, wrong))
        # run_id is optional: omitted (or null), it is not compared.
        for pins in (NO_RUN_ID, {**PINS, "run_id": None}):
            assert _count(_features(c, pins)) == 2
            assert _resolve(c, pins)["status"] == "READY" and _fetch(c, pins)["status"] == "READY"
        # Named, it must match: rows stored without a run_id do not serve a request naming one.
        legacy_key = {"merchant_id": "m-3", "arrival_seq": 2}
        assert _count(_features(c, LEGACY, "flow-2"), "flow-2") == 1
        assert _resolve(c, LEGACY, "flow-2")["status"] == "READY"
        _refused(_features(c, {**LEGACY, "run_id": PINS["run_id"]}, "flow-2"), "run_id")
        _refused(_resolve(c, {**LEGACY, "run_id": PINS["run_id"]}, "flow-2"))
        _refused(_fetch(c, {**LEGACY, "run_id": PINS["run_id"]}, legacy_key))
        # A run whose events carry two pins sets serves neither: its values mix them.
        _refused(_features(c, MIXED, "flow-3"), "seed")
        _refused(_features(c, {**MIXED, "seed": 43}, "flow-3"), "seed")
        # A run the store has never seen has nothing to mismatch: its keys are missing, no values.
        unseen = _features(c, {**PINS, "scenario_run_id": OTHER["scenario_run_id"]})
        assert _count(unseen) == 0 and unseen["snapshot"]["freshness"]["flags"] == ["MISSING_FEATURE_STATE"]


def test_a_required_pin_the_request_omits_is_missing_pins_on_both_planes(config: Path) -> None:
    with CtxplaneProcess(config), _client(config) as c:
        for pin in PIN_FIELDS:
            for pins in ({k: v for k, v in PINS.items() if k != pin}, {**PINS, pin: None}):
                features = _features(c, pins)
                assert (features["status"], features["code"], features["retryable"]) == ("ERROR", "MISSING_PINS", False)
                assert f"pins.{pin}" in features["detail"]
                for join in (_resolve(c, pins), _fetch(c, pins)):
                    assert (join["status"], join["reason_codes"], join["code"], join["retryable"]) == (
                        "INVALID_REQUEST", ["MISSING_PINS"], "MISSING_PINS", False), join
                    assert f"pins.{pin}" in join["detail"]
        for pins in (None, {}):
            assert _features(c, pins)["code"] == "MISSING_PINS"  # type: ignore[arg-type]
            assert _resolve(c, pins)["reason_codes"] == ["MISSING_PINS"]  # type: ignore[arg-type]
        # A malformed pin is not a missing one.
        bad = _resolve(c, {**PINS, "seed": -1})
        assert (bad["reason_codes"], bad["code"]) == (["INVALID_REQUEST"], "INVALID_REQUEST")


_ABSENT = object()


@st.composite
def _pin_variants(draw: st.DrawFn) -> dict[str, Any]:
    """PINS with each pin kept, replaced by another valid value, or left out."""
    pins: dict[str, Any] = {}
    for name, stored in PINS.items():
        value = draw(st.sampled_from([stored, OTHER[name], _ABSENT]))
        if value is not _ABSENT:
            pins[name] = value
    return pins


def test_values_are_served_only_when_every_pin_matches(config: Path) -> None:
    """Hypothesis over pins: an answer carries the run's values exactly when every required pin is
    present and every carried pin equals the stored one; otherwise it is an error or a miss."""
    with CtxplaneProcess(config), _client(config) as c:

        @settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(_pin_variants())
        def check(pins: dict[str, Any]) -> None:
            features, join = _features(c, pins), _resolve(c, pins)
            if any(name not in pins for name in PIN_FIELDS):
                assert features["code"] == "MISSING_PINS" and join["reason_codes"] == ["MISSING_PINS"]
                return
            matches = all(PINS[name] == value for name, value in pins.items())
            same_run = all(pins[name] == PINS[name] for name in ("platform_run_id", "scenario_run_id"))
            if matches:
                assert _count(features) == 2 and join["status"] == "READY"
            elif same_run:
                _refused(features)
                _refused(join)
            else:  # another run's scope: nothing of this run is read
                assert _count(features) == 0 and join["status"] == "MISSING_BINDING"

        check()
