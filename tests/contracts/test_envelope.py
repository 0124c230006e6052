"""The envelope schema: the hot-path checker agrees with the pydantic model; formats are exact."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from ctxplane.contracts.envelope import PIN_FIELDS, Envelope, envelope_error, pins_error, pins_mismatch, pins_problem
from tests.support.workload import PINS, envelope

VALID = envelope("arrival_events_5B", {"merchant_id": "m-1", "arrival_seq": 1})

_values = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 2**64 + 5), st.floats(allow_nan=False),
    st.sampled_from(["", "x", "a" * 32, "f" * 64, "F" * 64, "platform_20260207T000000Z", "2026-02-07T05:00:00.000000Z",
                     "2026-02-07T05:00:00Z", "2026-02-07T05:00:00.000000+00:00", "x" * 300, "a\x00b"]),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2), st.lists(st.integers(), max_size=2),
)


def _model_ok(env: dict[str, Any]) -> bool:
    try:
        Envelope.model_validate(env)
    except ValidationError:
        return False
    return True


@settings(max_examples=400)
@given(field=st.sampled_from(sorted(Envelope.model_fields) + ["extra_field"]), value=_values)
def test_fast_checker_agrees_with_the_model(field: str, value: Any) -> None:
    env = {**VALID, field: value}
    assert (envelope_error(env) is None) == _model_ok(env)


@given(st.sampled_from(["event_id", "event_type", "ts_utc", "manifest_fingerprint"]))
def test_required_fields(field: str) -> None:
    env = dict(VALID)
    del env[field]
    assert envelope_error(env) == f"missing required field {field}"
    assert not _model_ok(env)


@pytest.mark.parametrize(("field", "value"), [
    ("ts_utc", "2026-02-07T05:00:00.00000Z"), ("ts_utc", "2026-02-07 05:00:00.000000Z"),
    ("manifest_fingerprint", "A" * 64), ("run_id", "a" * 31), ("platform_run_id", "platform_2026"),
    ("ts_utc", "2026-02-07T05:00:00.000000Z\n"),
    ("seed", 2**64), ("seed", True), ("payload", []), ("event_class", "context_arrival"),
])
def test_invalid_formats(field: str, value: Any) -> None:
    assert envelope_error({**VALID, field: value}) is not None


def test_pins() -> None:
    assert pins_error(PINS) is None
    assert pins_error({k: v for k, v in PINS.items() if k != "run_id"}) is None
    assert pins_error("x") == "pins must be an object"
    assert pins_error({**PINS, "seed": None}) == "pins.seed is required"
    assert pins_error({**PINS, "scenario_run_id": "x"}) == "pins.scenario_run_id is invalid"
    assert pins_error({**PINS, "flow_id": "x"}) == "pins.flow_id is not a pin"
    # Absent pins, or an omitted required pin, are MISSING_PINS; a malformed one is INVALID_REQUEST.
    assert pins_problem(None) == pins_problem({}) == ("MISSING_PINS", f"pins are required ({', '.join(PIN_FIELDS)})")
    assert pins_problem({**PINS, "seed": None}) == ("MISSING_PINS", "pins.seed is required")
    assert pins_problem({k: v for k, v in PINS.items() if k != "run_id"}) is None  # run_id is optional
    assert pins_problem({**PINS, "seed": -1}) == ("INVALID_REQUEST", "pins.seed is invalid")


def test_pins_mismatch_compares_every_pin_the_request_carries() -> None:
    assert pins_mismatch(PINS, PINS) == []
    assert pins_mismatch({**PINS, "seed": 43, "parameter_hash": "0" * 64}, PINS) == ["parameter_hash", "seed"]
    stored_without_run_id = {k: v for k, v in PINS.items() if k != "run_id"}
    assert pins_mismatch(stored_without_run_id, PINS) == []  # omitted: not compared
    assert pins_mismatch({**PINS, "run_id": None}, PINS) == []
    assert pins_mismatch(PINS, stored_without_run_id) == ["run_id"]  # named: must match
    assert pins_mismatch({**PINS, "run_id": "c" * 32}, PINS) == ["run_id"]
    assert pins_mismatch(PINS, {**PINS, "seed": "42"}) == []  # compared as strings, as the origin does


def test_a_known_valid_run_identity_does_not_whitelist_lookalike_values() -> None:
    assert envelope_error(VALID) is None  # caches this run identity as valid
    assert envelope_error({**VALID, "seed": True}) == "invalid seed"  # True == 42? no, but True == 1
    one = {**VALID, "seed": 1}
    assert envelope_error(one) is None
    assert envelope_error({**one, "seed": True}) == "invalid seed"
    assert envelope_error({**one, "seed": 1.0}) == "invalid seed"
