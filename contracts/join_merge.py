"""Join merge conflicts: which stored role rows and binding claims conflict, and what the ledger says of them.

The join plane merges events into sets (docs/architecture.md §Storage): a frame's role rows keyed
by (run, frame key, role, event) and a flow's binding claims keyed by (run, flow, frame key,
anchor event). A conflict is a property of those sets, never of arrival order:

- two or more events in one role of one frame: ``JOIN_FRAME_ROLE_CONFLICT``;
- a flow that claims several frame keys, or a frame key claimed by several flows:
  ``FLOW_BINDING_CONFLICT``.

Every row involved gets a ledger row, with the conflict's details (sorted, so they are the same
whatever order the store returned the rows in). Pure: the apply program fetches the rows of the
touched frames and flows (actors/ingest/apply.py) and ledgers what these functions return.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, TypeVar

from ctxplane.contracts.intake import SourceRef
from ctxplane.contracts.join import frame_key_json
from ctxplane.contracts.reasons import Reason

__all__ = ("ClaimRow", "Conflict", "RoleRow", "binding_conflicts", "role_conflicts")


class RoleRow(NamedTuple):
    """One event in one role of one frame, with where it sat on the bus (a ``join_frame_roles`` row)."""

    platform_run_id: str
    scenario_run_id: str
    merchant_id: str
    arrival_seq: int
    role: str
    event_id: str
    event_type: str
    topic: str
    partition_id: int
    source_offset: str
    offset_kind: str

    @property
    def source(self) -> SourceRef:
        return SourceRef(self.topic, self.partition_id, self.source_offset, self.offset_kind)


class ClaimRow(NamedTuple):
    """An anchor event's claim that its flow is bound to a frame key (a ``flow_binding_claims`` row)."""

    platform_run_id: str
    scenario_run_id: str
    flow_id: str
    merchant_id: str
    arrival_seq: int
    event_id: str
    event_type: str
    topic: str
    partition_id: int
    source_offset: str
    offset_kind: str

    @property
    def source(self) -> SourceRef:
        return SourceRef(self.topic, self.partition_id, self.source_offset, self.offset_kind)


RowT = TypeVar("RowT", RoleRow, ClaimRow)


@dataclass(frozen=True, slots=True)
class Conflict(Generic[RowT]):
    """One conflicting group: every row in it is ledgered with this reason and these details."""

    reason: Reason
    details: dict[str, Any]
    rows: tuple[RowT, ...]


def role_conflicts(rows: Iterable[RoleRow]) -> list[Conflict[RoleRow]]:
    """The roles of a frame that hold two or more events, one conflict each, in first-seen order."""
    per_role: dict[tuple[str, str, str, int, str], list[RoleRow]] = defaultdict(list)
    for row in rows:
        per_role[row[:5]].append(row)
    return [
        Conflict(
            Reason.JOIN_FRAME_ROLE_CONFLICT,
            {"role": role, "join_frame_key": frame_key_json((run, scenario, merchant, seq)),
             "event_ids": sorted(r.event_id for r in group)},
            tuple(group),
        )
        for (run, scenario, merchant, seq, role), group in per_role.items()
        if len(group) > 1
    ]


def binding_conflicts(claims: Iterable[ClaimRow]) -> list[Conflict[ClaimRow]]:
    """The flows bound to several frame keys, then the frame keys claimed by several flows.

    A claim read twice counts once (the last reading of it is kept, in its first place). A claim
    can be in both kinds of conflict; the flow's comes first, so it is the one a ledger that keeps
    the first row per event and reason records.
    """
    unique = {claim[:6]: claim for claim in claims}
    by_flow: dict[tuple[str, str, str], list[ClaimRow]] = defaultdict(list)
    by_key: dict[tuple[str, str, str, int], list[ClaimRow]] = defaultdict(list)
    for claim in unique.values():
        by_flow[claim[:3]].append(claim)
        by_key[(claim.platform_run_id, claim.scenario_run_id, claim.merchant_id, claim.arrival_seq)].append(claim)
    conflicts: list[Conflict[ClaimRow]] = []
    for (_run, _scenario, flow_id), group in by_flow.items():
        keys = {(c.merchant_id, c.arrival_seq) for c in group}
        if len(keys) > 1:
            conflicts.append(Conflict(
                Reason.FLOW_BINDING_CONFLICT,
                {"flow_id": flow_id, "kind": "flow_bound_to_several_keys", "join_frame_keys": sorted(keys)},
                tuple(group),
            ))
    for key, group in by_key.items():
        flows = {c.flow_id for c in group}
        if len(flows) > 1:
            conflicts.append(Conflict(
                Reason.FLOW_BINDING_CONFLICT,
                {"join_frame_key": frame_key_json(key), "kind": "key_claimed_by_several_flows", "flow_ids": sorted(flows)},
                tuple(group),
            ))
    return conflicts
