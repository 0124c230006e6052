"""Query request parsing at the edge: every value that reaches a store column is checked against it."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ctxplane.contracts.features.serve import FeatureRequest, parse_feature_request
from ctxplane.contracts.join import JoinRequest, parse_join_request
from ctxplane.contracts.limits import BIGINT_MAX, sequence_number
from tests.support.workload import PINS


def _fetch(seq: object, merchant: object = "m-1") -> JoinRequest | tuple[str, str | None]:
    request = {"op": "fetch_join_frame", "pins": PINS, "join_frame_key": {"merchant_id": merchant, "arrival_seq": seq}}
    return parse_join_request(request, max_wait_ms=100)


@pytest.mark.parametrize("seq", [2**63, 2**64 - 1, str(2**63), "1" * 40, "9" * 5000])
def test_fetch_join_frame_with_an_arrival_seq_beyond_bigint_is_invalid_and_names_the_field(seq: object) -> None:
    # 2**63 once ended the SQLite server task (OverflowError) and answered UNAVAILABLE on PostgreSQL.
    parsed = _fetch(seq)
    assert not isinstance(parsed, JoinRequest)
    assert parsed[0].startswith("join_frame_key.arrival_seq") and str(BIGINT_MAX) in parsed[0]


@pytest.mark.parametrize("seq", [0, BIGINT_MAX, str(BIGINT_MAX)])
def test_arrival_seq_up_to_bigint_max_is_a_valid_key(seq: object) -> None:
    parsed = _fetch(seq)
    assert isinstance(parsed, JoinRequest) and parsed.key is not None and parsed.key[3] == int(seq)  # type: ignore[call-overload]


@pytest.mark.parametrize("seq", [-1, True, 1.5, 1e40, None, "", "-3", "١٢", {"a": 1}, [1]])
def test_other_arrival_seqs_are_invalid(seq: object) -> None:
    parsed = _fetch(seq)
    assert not isinstance(parsed, JoinRequest) and "arrival_seq" in parsed[0]


def test_text_with_nul_is_invalid_where_it_would_reach_a_column() -> None:
    assert not isinstance(_fetch(1, merchant="m\x00"), JoinRequest)
    resolve = parse_join_request({"op": "resolve_flow_binding", "pins": PINS, "flow_id": "f\x00"}, max_wait_ms=0)
    assert not isinstance(resolve, JoinRequest) and "flow_id" in resolve[0]
    features = {"pins": PINS, "as_of_time_utc": "2026-02-07T05:00:00.000000Z",
                "feature_keys": [{"key_type": "flow_id", "key_id": "f\x00"}],
                "feature_groups": [{"name": "core_features", "version": "v1"}]}
    parsed = parse_feature_request(features, max_wait_ms=0)
    assert not isinstance(parsed, FeatureRequest) and parsed[0] == "INVALID_REQUEST" and "key_id" in parsed[1]


def _beyond_bigint(value: object) -> bool:
    if type(value) is int:
        return value > BIGINT_MAX
    digits = value.lstrip("0") if type(value) is str and value else ""
    return len(digits) > 19 or (digits != "" and int(digits) > BIGINT_MAX)


@given(st.one_of(st.integers(), st.text(alphabet="0123456789", max_size=6000), st.floats(), st.booleans(), st.none()))
def test_sequence_number_is_in_bigint_range_or_refused(value: Any) -> None:
    try:
        number = sequence_number(value)
    except ValueError:
        assert _beyond_bigint(value)
        return
    assert not _beyond_bigint(value)
    assert number is None or 0 <= number <= BIGINT_MAX
