"""Join merge conflicts: role conflicts and binding conflicts, their rows and their details."""

from __future__ import annotations

import orjson
from hypothesis import given
from hypothesis import strategies as st

from ctxplane.contracts.intake import SourceRef
from ctxplane.contracts.join_merge import ClaimRow, Conflict, RoleRow, binding_conflicts, role_conflicts
from ctxplane.contracts.reasons import Reason

RUN, SCN = "run-1", "scn-1"


def _role(event_id: str, role: str = "arrival_event", merchant: str = "m-1", seq: int = 1, offset: int = 0) -> RoleRow:
    return RoleRow(RUN, SCN, merchant, seq, role, event_id, "arrival_events", "t.ctx", 0, str(offset), "file_line")


def _claim(event_id: str, flow: str, merchant: str = "m-1", seq: int = 1, offset: int = 0) -> ClaimRow:
    return ClaimRow(RUN, SCN, flow, merchant, seq, event_id, "flow_anchor", "t.anchor", 2, str(offset), "file_line")


def _key(merchant: str = "m-1", seq: int = 1) -> dict[str, object]:
    return {"platform_run_id": RUN, "scenario_run_id": SCN, "merchant_id": merchant, "arrival_seq": seq}


def _ledger_json(conflict: Conflict[RoleRow] | Conflict[ClaimRow]) -> bytes:
    """The details as the ledger stores them (actors/ingest/apply.py)."""
    return orjson.dumps(conflict.details, option=orjson.OPT_SORT_KEYS)


def test_typed_rows_take_the_store_rows_and_name_their_source() -> None:
    row = RoleRow._make((RUN, SCN, "m-1", 7, "arrival_event", "e1", "arrival_events", "t.ctx", 3, "41", "file_line"))
    assert row.source == SourceRef("t.ctx", 3, "41", "file_line")
    assert (row.merchant_id, row.arrival_seq, row.role, row.event_id) == ("m-1", 7, "arrival_event", "e1")
    claim = ClaimRow._make((RUN, SCN, "f-1", "m-1", 7, "e2", "flow_anchor", "t.anchor", 1, "9", "kinesis_sequence"))
    assert claim.source == SourceRef("t.anchor", 1, "9", "kinesis_sequence")
    assert (claim.flow_id, claim.merchant_id, claim.arrival_seq, claim.event_id) == ("f-1", "m-1", 7, "e2")


def test_no_rows_and_one_event_per_role_are_no_conflict() -> None:
    assert role_conflicts([]) == []
    assert role_conflicts([_role("e1"), _role("e2", role="flow_anchor"), _role("e3", seq=2)]) == []


def test_two_events_in_one_role_are_a_role_conflict_for_both() -> None:
    a, b = _role("e2", offset=5), _role("e1", offset=6)
    (conflict,) = role_conflicts([a, b, _role("e3", role="flow_anchor")])
    assert conflict.reason is Reason.JOIN_FRAME_ROLE_CONFLICT
    assert conflict.rows == (a, b)
    assert conflict.details == {"role": "arrival_event", "join_frame_key": _key(), "event_ids": ["e1", "e2"]}
    assert _ledger_json(conflict) == (
        b'{"event_ids":["e1","e2"],"join_frame_key":{"arrival_seq":1,"merchant_id":"m-1",'
        b'"platform_run_id":"run-1","scenario_run_id":"scn-1"},"role":"arrival_event"}'
    )


def test_several_role_conflicts_are_one_each_in_first_seen_order() -> None:
    rows = [_role("e1"), _role("x1", role="flow_anchor"), _role("e2"), _role("x2", role="flow_anchor"), _role("e3"),
            _role("o1", seq=2)]
    first, second = role_conflicts(rows)
    assert [r.event_id for r in first.rows] == ["e1", "e2", "e3"]
    assert first.details["event_ids"] == ["e1", "e2", "e3"]
    assert second.details == {"role": "flow_anchor", "join_frame_key": _key(), "event_ids": ["x1", "x2"]}


def test_no_claims_and_consistent_claims_are_no_binding_conflict() -> None:
    assert binding_conflicts([]) == []
    # One flow, one key, claimed by two anchors: agreement, not a conflict.
    assert binding_conflicts([_claim("a1", "f-1"), _claim("a2", "f-1"), _claim("a3", "f-2", seq=2)]) == []


def test_a_flow_bound_to_several_keys_is_a_binding_conflict() -> None:
    a, b = _claim("a1", "f-1", seq=2), _claim("a2", "f-1", merchant="m-0", seq=9)
    (conflict,) = binding_conflicts([a, b])
    assert conflict.reason is Reason.FLOW_BINDING_CONFLICT
    assert conflict.rows == (a, b)
    assert conflict.details == {"flow_id": "f-1", "kind": "flow_bound_to_several_keys",
                                "join_frame_keys": [("m-0", 9), ("m-1", 2)]}
    assert _ledger_json(conflict) == (
        b'{"flow_id":"f-1","join_frame_keys":[["m-0",9],["m-1",2]],"kind":"flow_bound_to_several_keys"}'
    )


def test_a_key_claimed_by_several_flows_is_a_binding_conflict() -> None:
    a, b, c = _claim("a1", "f-2"), _claim("a2", "f-1"), _claim("a3", "f-2")
    (conflict,) = binding_conflicts([a, b, c])
    assert conflict.rows == (a, b, c)
    assert conflict.details == {"join_frame_key": _key(), "kind": "key_claimed_by_several_flows",
                                "flow_ids": ["f-1", "f-2"]}
    assert _ledger_json(conflict) == (
        b'{"flow_ids":["f-1","f-2"],"join_frame_key":{"arrival_seq":1,"merchant_id":"m-1",'
        b'"platform_run_id":"run-1","scenario_run_id":"scn-1"},"kind":"key_claimed_by_several_flows"}'
    )


def test_a_claim_in_both_kinds_of_conflict_is_in_both_and_the_flow_conflicts_come_first() -> None:
    # f-1 claims keys 1 and 2; key 2 is also claimed by f-2.
    a, b, c = _claim("a1", "f-1", seq=1), _claim("a2", "f-1", seq=2), _claim("a3", "f-2", seq=2)
    kinds = [(conflict.details["kind"], conflict.rows) for conflict in binding_conflicts([c, a, b])]
    assert kinds == [
        ("flow_bound_to_several_keys", (a, b)),
        ("key_claimed_by_several_flows", (c, b)),
    ]


def test_a_claim_read_twice_counts_once() -> None:
    a, b = _claim("a1", "f-1"), _claim("a2", "f-2")
    (conflict,) = binding_conflicts([a, b, a])
    assert conflict.rows == (a, b)
    assert binding_conflicts([a, a]) == []


def test_runs_and_scenarios_are_separate() -> None:
    other = ClaimRow("run-2", SCN, "f-1", "m-1", 2, "b1", "flow_anchor", "t.anchor", 0, "1", "file_line")
    assert binding_conflicts([_claim("a1", "f-1"), other]) == []
    elsewhere = RoleRow(RUN, "scn-2", "m-1", 1, "arrival_event", "e2", "arrival_events", "t.ctx", 0, "1", "file_line")
    assert role_conflicts([_role("e1"), elsewhere]) == []


_ROLES = st.lists(
    st.builds(_role, st.sampled_from(["e1", "e2", "e3", "e4"]), st.sampled_from(["arrival_event", "flow_anchor"]),
              st.sampled_from(["m-1", "m-2"]), st.integers(1, 2)),
    max_size=12, unique_by=lambda r: r[:6],
)
_CLAIMS = st.lists(
    st.builds(_claim, st.sampled_from(["a1", "a2", "a3", "a4"]), st.sampled_from(["f-1", "f-2", "f-3"]),
              st.sampled_from(["m-1", "m-2"]), st.integers(1, 2)),
    max_size=12,
)


def _by_group(conflicts: list[Conflict[RoleRow]] | list[Conflict[ClaimRow]]) -> dict[bytes, frozenset[object]]:
    return {_ledger_json(c): frozenset(c.rows) for c in conflicts}


@given(rows=_ROLES, data=st.data())
def test_role_conflicts_do_not_depend_on_the_order_rows_are_read_in(rows: list[RoleRow], data: st.DataObject) -> None:
    shuffled = data.draw(st.permutations(rows))
    assert _by_group(role_conflicts(shuffled)) == _by_group(role_conflicts(rows))


@given(claims=_CLAIMS, data=st.data())
def test_binding_conflicts_do_not_depend_on_the_order_claims_are_read_in(
    claims: list[ClaimRow], data: st.DataObject
) -> None:
    shuffled = data.draw(st.permutations(claims))
    assert _by_group(binding_conflicts(shuffled)) == _by_group(binding_conflicts(claims))
    for conflict in binding_conflicts(claims):
        assert len(conflict.rows) > 1
        if conflict.details["kind"] == "flow_bound_to_several_keys":
            assert len({(c.merchant_id, c.arrival_seq) for c in conflict.rows}) > 1
        else:
            assert len({c.flow_id for c in conflict.rows}) > 1
