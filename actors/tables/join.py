"""The join family: the pins sets (``context_pins``), the frames' role rows (``join_frame_roles``)
and the flow binding claims (``flow_binding_claims``), migrations 0001 and 0004.

Writes are commutative inserts from the commit's staged events (``stage_events``,
actors/tables/dedupe.py); conflicts (two events in one role, a flow bound to two keys or a key to
two flows) are derived from the rows by the queries below, whatever the order events came in.
"""

from __future__ import annotations

from collections.abc import Iterable

from ctxplane.contracts.canonical import canonical_json
from ctxplane.contracts.intake import Accepted
from ctxplane.contracts.join import BindingClaim, RoleEntry
from ctxplane.runtime.store import ExecMany, Fetch, Program, Row

__all__ = (
    "BINDING_CONFLICTS",
    "CLAIMS_DIGEST",
    "CLAIMS_FROM_STAGE",
    "PINS_DIGEST",
    "ROLES_DIGEST",
    "ROLES_FROM_STAGE",
    "ROLE_CONFLICTS",
    "all_pins_program",
    "flow_claims_program",
    "frame_roles_program",
    "key_claims_program",
    "record_pins",
    "run_pins_program",
)

# -- writes, from the staged events of a commit ---------------------------------------------------

_PINS_INSERT = (
    "INSERT INTO context_pins (pins_id, platform_run_id, scenario_run_id, pins_json) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (pins_id) DO NOTHING"
)
ROLES_FROM_STAGE = (
    "INSERT INTO join_frame_roles (platform_run_id, scenario_run_id, merchant_id, arrival_seq, role, event_id,"
    " event_type, payload_hash, payload_json, pins_id, ts_utc, topic, partition_id, source_offset, offset_kind)"
    " SELECT platform_run_id, scenario_run_id, merchant_id, arrival_seq, role, event_id, event_type, payload_hash,"
    " payload_json, pins_id, ts_utc, topic, partition_id, source_offset, offset_kind"
    " FROM stage_events WHERE plane = 'join'"
    " ON CONFLICT (platform_run_id, scenario_run_id, merchant_id, arrival_seq, role, event_id) DO NOTHING"
)
CLAIMS_FROM_STAGE = (
    "INSERT INTO flow_binding_claims (platform_run_id, scenario_run_id, flow_id, merchant_id, arrival_seq,"
    " event_id, event_type, payload_hash, pins_id, ts_utc, topic, partition_id, source_offset, offset_kind)"
    " SELECT platform_run_id, scenario_run_id, flow_id, merchant_id, arrival_seq, event_id, event_type,"
    " payload_hash, pins_id, ts_utc, topic, partition_id, source_offset, offset_kind"
    " FROM stage_events WHERE plane = 'join' AND flow_id IS NOT NULL"
    " ON CONFLICT (platform_run_id, scenario_run_id, flow_id, merchant_id, arrival_seq, event_id) DO NOTHING"
)


def record_pins(events: Iterable[Accepted]) -> ExecMany:
    """The pins set of each of ``events`` (one row per pins id; a set already stored is kept)."""
    pins = {v.pins_id: v for v in events}
    return ExecMany(
        _PINS_INSERT,
        [(pid, v.platform_run_id, v.scenario_run_id, canonical_json(v.pins).decode()) for pid, v in pins.items()],
    )


# -- conflicts among the staged events' frames and flows ------------------------------------------

_SAME_FRAME = (
    "{o}.platform_run_id = {t}.platform_run_id AND {o}.scenario_run_id = {t}.scenario_run_id"
    " AND {o}.merchant_id = {t}.merchant_id AND {o}.arrival_seq = {t}.arrival_seq"
)
_SAME_FLOW = (
    "{o}.flow_id = {t}.flow_id AND {o}.platform_run_id = {t}.platform_run_id"
    " AND {o}.scenario_run_id = {t}.scenario_run_id"
)
# Frames: the role rows of the touched frames in a role that holds more than one event. One index
# range scan per touched frame finds the roles in conflict (rare), whose rows are then read.
ROLE_CONFLICTS = (
    "SELECT t.platform_run_id, t.scenario_run_id, t.merchant_id, t.arrival_seq, t.role, t.event_id, t.event_type,"
    " t.topic, t.partition_id, t.source_offset, t.offset_kind"
    " FROM (SELECT r.platform_run_id, r.scenario_run_id, r.merchant_id, r.arrival_seq, r.role"
    " FROM (SELECT DISTINCT platform_run_id, scenario_run_id, merchant_id, arrival_seq FROM stage_events"
    " WHERE plane = 'join') AS k"
    f" JOIN join_frame_roles AS r ON {_SAME_FRAME.format(o='r', t='k')}"
    " GROUP BY r.platform_run_id, r.scenario_run_id, r.merchant_id, r.arrival_seq, r.role"
    " HAVING count(*) > 1) AS c"
    f" JOIN join_frame_roles AS t ON {_SAME_FRAME.format(o='t', t='c')} AND t.role = c.role"
)
# Bindings: of the claims of the touched flows and the claims on the touched frame keys, those
# whose flow also claims another key or whose key is also claimed by another flow. These are
# exactly the rows of every conflicting group that grouping *all* those claims by flow and by key
# would find (a conflicting group's rows all have such a sibling; a group without a conflict keeps
# at most one key or flow when filtered), so the ledger is the same with far fewer rows read.
_CONFLICTED_CLAIM = (
    f"(EXISTS (SELECT 1 FROM flow_binding_claims AS o WHERE {_SAME_FLOW.format(o='o', t='t')}"
    " AND (o.merchant_id <> t.merchant_id OR o.arrival_seq <> t.arrival_seq))"
    f" OR EXISTS (SELECT 1 FROM flow_binding_claims AS o WHERE {_SAME_FRAME.format(o='o', t='t')}"
    " AND o.flow_id <> t.flow_id))"
)
_CLAIM_COLUMNS = (
    "t.platform_run_id, t.scenario_run_id, t.flow_id, t.merchant_id, t.arrival_seq, t.event_id,"
    " t.event_type, t.topic, t.partition_id, t.source_offset, t.offset_kind"
)
BINDING_CONFLICTS = (
    f"SELECT {_CLAIM_COLUMNS} FROM (SELECT DISTINCT platform_run_id, scenario_run_id, flow_id FROM stage_events"
    " WHERE plane = 'join' AND flow_id IS NOT NULL) AS k"
    f" JOIN flow_binding_claims AS t ON {_SAME_FLOW.format(o='t', t='k')} WHERE {_CONFLICTED_CLAIM}"
    " UNION "
    f"SELECT {_CLAIM_COLUMNS} FROM (SELECT DISTINCT platform_run_id, scenario_run_id, merchant_id, arrival_seq"
    " FROM stage_events WHERE plane = 'join' AND flow_id IS NOT NULL) AS k"
    f" JOIN flow_binding_claims AS t ON {_SAME_FRAME.format(o='t', t='k')} WHERE {_CONFLICTED_CLAIM}"
)

# -- reads ----------------------------------------------------------------------------------------

_CLAIMS = (
    "SELECT c.flow_id, c.merchant_id, c.arrival_seq, c.event_id, c.event_type, c.payload_hash, p.pins_json,"
    " c.ts_utc, c.topic, c.partition_id, c.source_offset, c.offset_kind"
    " FROM flow_binding_claims c JOIN context_pins p ON p.pins_id = c.pins_id"
    " WHERE c.platform_run_id = ? AND c.scenario_run_id = ?"
)
_FLOW_CLAIMS = _CLAIMS + " AND c.flow_id = ? ORDER BY c.ts_utc, c.event_id"
_KEY_CLAIMS = _CLAIMS + " AND c.merchant_id = ? AND c.arrival_seq = ?"
_ROLES = (
    "SELECT r.role, r.event_id, r.event_type, r.payload_hash, r.payload_json, p.pins_json, r.ts_utc, r.topic,"
    " r.partition_id, r.source_offset, r.offset_kind"
    " FROM join_frame_roles r JOIN context_pins p ON p.pins_id = r.pins_id"
    " WHERE r.platform_run_id = ? AND r.scenario_run_id = ? AND r.merchant_id = ? AND r.arrival_seq = ?"
    " ORDER BY r.role, r.event_id"
)
# Every pins set the store holds for a run (context_pins is written in the apply transaction of
# the run's first event with each set; a handful of rows per run, found by context_pins_by_run).
_RUN_PINS = "SELECT pins_json FROM context_pins WHERE platform_run_id = ? AND scenario_run_id = ? ORDER BY pins_id"


def flow_claims_program(run: str, scenario: str, flow_id: str) -> Program[tuple[BindingClaim, ...]]:
    """The claims of one flow, oldest first."""
    rows = yield Fetch(_FLOW_CLAIMS, (run, scenario, flow_id))
    return tuple(BindingClaim(*row) for row in rows)


def key_claims_program(run: str, scenario: str, merchant_id: str, arrival_seq: int) -> Program[tuple[BindingClaim, ...]]:
    """The claims on one frame key."""
    rows = yield Fetch(_KEY_CLAIMS, (run, scenario, merchant_id, arrival_seq))
    return tuple(BindingClaim(*row) for row in rows)


def frame_roles_program(run: str, scenario: str, merchant_id: str, arrival_seq: int) -> Program[tuple[RoleEntry, ...]]:
    """The role rows of one frame, by role and event id."""
    rows = yield Fetch(_ROLES, (run, scenario, merchant_id, arrival_seq))
    return tuple(RoleEntry(*row) for row in rows)


def run_pins_program(run: str, scenario: str) -> Program[list[Row]]:
    """``(pins_json,)`` of every pins set stored for the run, by pins id."""
    rows = yield Fetch(_RUN_PINS, (run, scenario))
    return list(rows)


def all_pins_program() -> Program[list[Row]]:
    """``(platform_run_id, scenario_run_id, pins_json)`` of every pins set the store holds."""
    rows = yield Fetch("SELECT platform_run_id, scenario_run_id, pins_json FROM context_pins")
    return list(rows)


# -- the family's part of the semantic state digest (actors/operate/digest.py): no bus positions --

PINS_DIGEST = ("context_pins", "SELECT pins_id, pins_json FROM context_pins")
ROLES_DIGEST = ("join_frame_roles", "SELECT platform_run_id, scenario_run_id, merchant_id, arrival_seq, role,"
                                    " event_id, event_type, payload_hash, pins_id FROM join_frame_roles")
CLAIMS_DIGEST = ("flow_binding_claims", "SELECT platform_run_id, scenario_run_id, flow_id, merchant_id, arrival_seq,"
                                        " event_id, event_type, payload_hash, pins_id FROM flow_binding_claims")
