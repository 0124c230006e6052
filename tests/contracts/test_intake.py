"""Intake verdicts: every reason code, in order; junk bytes never raise; hashing is canonical."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ctxplane.config.settings import CONTEXT_TOPICS, TRAFFIC_TOPICS
from ctxplane.contracts.canonical import canonical_json
from ctxplane.contracts.classes import Plane
from ctxplane.contracts.intake import (
    Accepted,
    Ignored,
    IntakeRules,
    Rejected,
    SourceRef,
    payload_hash,
)
from ctxplane.contracts.reasons import INTAKE_ORDER, Reason
from tests.support.workload import (
    ANCHOR_FRAUD,
    ARRIVAL,
    OTHER_RUN,
    PINS,
    TRAFFIC_FRAUD,
    envelope,
)

SRC = SourceRef(ARRIVAL[0], 0, "0", "file_line")
JOIN = IntakeRules(Plane.JOIN, frozenset(CONTEXT_TOPICS), required_run=PINS["platform_run_id"])


def _line(env: Any) -> bytes:
    return orjson.dumps({"partition_key": "k", "payload": env, "published_at_utc": "2026-01-01T00:00:00.000000Z"})


def _reason(raw: bytes, rules: IntakeRules = JOIN, source: SourceRef = SRC) -> Reason | None:
    verdict = rules.classify(source, raw)
    return verdict.reason if isinstance(verdict, Rejected) else None


GOOD = envelope(ARRIVAL[1], {"merchant_id": "m-1", "arrival_seq": "42"})


def test_accepts_and_normalises() -> None:
    verdict = JOIN.classify(SRC, _line(GOOD))
    assert isinstance(verdict, Accepted)
    assert (verdict.merchant_id, verdict.arrival_seq, verdict.role) == ("m-1", 42, "arrival_event")
    # The origin's {"envelope": ...} form and a bare envelope line are accepted too.
    assert isinstance(JOIN.classify(SRC, orjson.dumps({"envelope": GOOD})), Accepted)
    assert isinstance(JOIN.classify(SRC, orjson.dumps(GOOD)), Accepted)


def test_a_record_cut_by_the_bus_is_rejected_for_its_full_size() -> None:
    """A bus adapter hands out only the first bytes of an oversized record, with its full size."""
    from ctxplane.contracts.intake import MAX_RECORD_BYTES

    prefix = _line(GOOD)  # even a prefix that parses is not the record
    verdict = JOIN.classify(SRC, prefix, full_size=400 * 1024 * 1024)
    assert isinstance(verdict, Rejected) and verdict.reason is Reason.ENVELOPE_MISSING
    assert verdict.details == {"error": f"record of {400 * 1024 * 1024} bytes exceeds {MAX_RECORD_BYTES}"}
    assert isinstance(JOIN.classify(SRC, prefix, full_size=len(prefix)), Accepted)


@pytest.mark.parametrize(("raw", "reason"), [
    (b"", Reason.ENVELOPE_MISSING),
    (b"not json", Reason.ENVELOPE_MISSING),
    (b"\xff\xfe\x00", Reason.ENVELOPE_MISSING),
    (b"[1, 2]", Reason.ENVELOPE_MISSING),
    (b'{"partition_key": "k"}', Reason.ENVELOPE_MISSING),
    (b"x" * (2 * 1024 * 1024), Reason.ENVELOPE_MISSING),
    (_line({**GOOD, "extra": 1}), Reason.ENVELOPE_INVALID),
    (_line({**GOOD, "ts_utc": "2026-13-45T00:00:00.000000Z"}), Reason.ENVELOPE_INVALID),
    (_line(envelope("no_such_type", {})), Reason.EVENT_CLASS_UNSUPPORTED),
    (_line(envelope(TRAFFIC_FRAUD[1], {})), Reason.EVENT_CLASS_UNSUPPORTED),
    (_line({k: v for k, v in GOOD.items() if k != "seed"}), Reason.REQUIRED_PINS_MISSING),
    (_line({k: v for k, v in GOOD.items() if k != "platform_run_id"}), Reason.PLATFORM_RUN_ID_MISSING),
    (_line({**GOOD, "platform_run_id": OTHER_RUN}), Reason.RUN_SCOPE_MISMATCH),
    (_line({k: v for k, v in GOOD.items() if k != "payload"}), Reason.PAYLOAD_INVALID),
    (_line({**GOOD, "payload": {"merchant_id": "m"}}), Reason.JOIN_KEY_MISSING),
    (_line({**GOOD, "payload": {"merchant_id": "m", "arrival_seq": -1}}), Reason.JOIN_KEY_MISSING),
    (_line({**GOOD, "payload": {"merchant_id": "m", "arrival_seq": True}}), Reason.JOIN_KEY_MISSING),
    (_line(envelope(ANCHOR_FRAUD[1], {"merchant_id": "m", "arrival_seq": 1})), Reason.FLOW_ID_MISSING),
])
def test_reason_codes(raw: bytes, reason: Reason) -> None:
    assert _reason(raw) is reason


@pytest.mark.parametrize("seq", [2**63, 2**64 - 1, str(2**63), "1" * 40, "9" * 5000])
def test_an_arrival_seq_beyond_bigint_is_payload_invalid_and_names_the_field(seq: object) -> None:
    # 2**63 once crash-looped the store-writer: no store column can hold it.
    verdict = JOIN.classify(SRC, _line({**GOOD, "payload": {"merchant_id": "m", "arrival_seq": seq}}))
    assert isinstance(verdict, Rejected) and verdict.reason is Reason.PAYLOAD_INVALID
    assert verdict.details["field"] == "arrival_seq" and str(2**63 - 1) in verdict.details["error"]
    # PAYLOAD_INVALID comes before JOIN_KEY_MISSING, so it wins over a missing merchant_id too.
    assert _reason(_line({**GOOD, "payload": {"arrival_seq": seq}})) is Reason.PAYLOAD_INVALID


@pytest.mark.parametrize("seq", [0, 2**63 - 1, str(2**63 - 1), "0" * 30 + "7"])
def test_arrival_seq_up_to_bigint_max_is_accepted(seq: object) -> None:
    verdict = JOIN.classify(SRC, _line({**GOOD, "payload": {"merchant_id": "m", "arrival_seq": seq}}))
    assert isinstance(verdict, Accepted) and verdict.arrival_seq == int(seq)  # type: ignore[call-overload]


def test_text_a_postgresql_column_cannot_hold_is_refused_at_intake() -> None:
    nul = "m\x00x"
    assert _reason(_line({**GOOD, "payload": {"merchant_id": nul, "arrival_seq": 1}})) is Reason.JOIN_KEY_MISSING
    anchor = envelope(ANCHOR_FRAUD[1], {"merchant_id": "m", "arrival_seq": 1, "flow_id": nul})
    assert _reason(_line(anchor)) is Reason.FLOW_ID_MISSING
    verdict = JOIN.classify(SRC, _line({**GOOD, "event_id": nul}))
    # Refused, and the NUL-bearing id is not copied into the ledger row (PostgreSQL would refuse it).
    assert isinstance(verdict, Rejected) and verdict.reason is Reason.ENVELOPE_INVALID and verdict.event_id is None
    features = IntakeRules(Plane.FEATURES, frozenset(TRAFFIC_TOPICS), feature_key_types=("flow_id", "device_id"))
    traffic = features.classify(SourceRef(TRAFFIC_FRAUD[0], 0, "0", "file_line"),
                                _line(envelope(TRAFFIC_FRAUD[1], {"flow_id": nul, "device_id": "d-1"})))
    assert isinstance(traffic, Accepted) and traffic.feature_keys == (("device_id", "d-1"),)


def test_topic_allow_list_and_replay_pins() -> None:
    assert _reason(_line(GOOD), source=SourceRef("fp.bus.other", 0, "0", "file_line")) is Reason.TOPIC_NOT_ALLOWED
    replay = IntakeRules(Plane.JOIN, frozenset(CONTEXT_TOPICS), replay_pins={"platform_run_id": OTHER_RUN})
    verdict = replay.classify(SRC, _line(GOOD))
    assert isinstance(verdict, Rejected) and verdict.reason is Reason.REPLAY_PINS_MISMATCH
    assert verdict.details == {"mismatches": {"platform_run_id": {"expected": OTHER_RUN, "actual": PINS["platform_run_id"]}}}


def test_first_failure_wins() -> None:
    # Invalid envelope AND wrong run AND no join key: the envelope check comes first.
    raw = _line({**GOOD, "platform_run_id": OTHER_RUN, "payload": {}, "extra": 1})
    assert _reason(raw) is Reason.ENVELOPE_INVALID
    assert list(INTAKE_ORDER).index(Reason.ENVELOPE_INVALID) < list(INTAKE_ORDER).index(Reason.RUN_SCOPE_MISMATCH)


def test_decision_outputs_on_traffic_topics_are_ignored() -> None:
    rules = IntakeRules(Plane.FEATURES, frozenset(TRAFFIC_TOPICS))
    for event_type in ("decision_response", "action_intent", "action_outcome"):
        verdict = rules.classify(SourceRef(TRAFFIC_FRAUD[0], 0, "0", "file_line"), _line(envelope(event_type, {})))
        assert isinstance(verdict, Ignored)


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_junk_bytes_never_raise(raw: bytes) -> None:
    assert isinstance(JOIN.classify(SRC, raw), Rejected | Accepted)


@settings(max_examples=200)
@given(st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.text(max_size=5),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=3), c, max_size=3), max_leaves=10))
def test_junk_json_never_raises(value: Any) -> None:
    JOIN.classify(SRC, orjson.dumps(value))
    JOIN.classify(SRC, _line(value))


def test_payload_hash_ignores_key_order_and_envelope_timestamps() -> None:
    a = payload_hash("t", "v1", {"a": 1, "b": {"c": 2, "d": 3}})
    assert a == payload_hash("t", "v1", {"b": {"d": 3, "c": 2}, "a": 1})
    assert a != payload_hash("t", "v2", {"a": 1, "b": {"c": 2, "d": 3}})
    one = JOIN.classify(SRC, _line(GOOD))
    two = JOIN.classify(SRC, _line({**GOOD, "ts_utc": "2030-01-01T00:00:00.000000Z", "emitted_at_utc": "2030-01-01T00:00:00.000000Z"}))
    assert isinstance(one, Accepted) and isinstance(two, Accepted) and one.payload_hash == two.payload_hash


def test_canonical_json_is_sorted_compact_utf8() -> None:
    assert canonical_json({"b": 1, "a": [True, None, "é"]}) == '{"a":[true,null,"é"],"b":1}'.encode()
