"""Read programs: each answer's inputs read in one store snapshot (both backends)."""

from __future__ import annotations

from ctxplane.contracts.join import (
    BindingClaim,
    CheckpointRow,
    JoinRequest,
    JoinSnapshot,
    RoleEntry,
    basis_of,
)
from ctxplane.runtime.store import Fetch, Program

__all__ = ("basis_program", "checkpoints_program", "join_snapshot_program", "plane_stream")

_CLAIMS = (
    "SELECT c.flow_id, c.merchant_id, c.arrival_seq, c.event_id, c.event_type, c.payload_hash, p.pins_json,"
    " c.ts_utc, c.topic, c.partition_id, c.source_offset, c.offset_kind"
    " FROM flow_binding_claims c JOIN context_pins p ON p.pins_id = c.pins_id"
    " WHERE c.platform_run_id = ? AND c.scenario_run_id = ?"
)
_ROLES = (
    "SELECT r.role, r.event_id, r.event_type, r.payload_hash, r.payload_json, p.pins_json, r.ts_utc, r.topic,"
    " r.partition_id, r.source_offset, r.offset_kind"
    " FROM join_frame_roles r JOIN context_pins p ON p.pins_id = r.pins_id"
    " WHERE r.platform_run_id = ? AND r.scenario_run_id = ? AND r.merchant_id = ? AND r.arrival_seq = ?"
    " ORDER BY r.role, r.event_id"
)


def plane_stream(plane: str, scope: str) -> str:
    """The basis stream name of a plane: ``ctxplane.<plane>`` scoped to a pinned run if any."""
    return f"ctxplane.{plane}" if scope == "*" else f"ctxplane.{plane}::{scope}"


def checkpoints_program(scope: str, plane: str | None = None) -> Program[tuple[CheckpointRow, ...]]:
    sql = "SELECT topic, partition_id, next_offset, offset_kind, watermark_ts_utc FROM checkpoints WHERE scope = ?"
    params: list[object] = [scope]
    if plane is not None:
        sql += " AND plane = ?"
        params.append(plane)
    rows = yield Fetch(sql + " ORDER BY topic, partition_id", params)
    return tuple(CheckpointRow(*row) for row in rows)


def join_snapshot_program(request: JoinRequest, *, scope: str) -> Program[JoinSnapshot]:
    run, scenario = request.pins["platform_run_id"], request.pins["scenario_run_id"]
    flow_claims: tuple[BindingClaim, ...] = ()
    key_claims: tuple[BindingClaim, ...] = ()
    roles: tuple[RoleEntry, ...] = ()
    key = request.key
    if request.flow_id is not None:
        rows = yield Fetch(_CLAIMS + " AND c.flow_id = ? ORDER BY c.ts_utc, c.event_id", (run, scenario, request.flow_id))
        flow_claims = tuple(BindingClaim(*row) for row in rows)
        if flow_claims:
            first = flow_claims[0]
            key = (run, scenario, first.merchant_id, first.arrival_seq)
    if key is not None:
        rows = yield Fetch(_CLAIMS + " AND c.merchant_id = ? AND c.arrival_seq = ?", (run, scenario, key[2], key[3]))
        key_claims = tuple(BindingClaim(*row) for row in rows)
        rows = yield Fetch(_ROLES, (run, scenario, key[2], key[3]))
        roles = tuple(RoleEntry(*row) for row in rows)
    checkpoints = yield from checkpoints_program(scope, "join")
    return JoinSnapshot(flow_claims, key_claims, roles, checkpoints, plane_stream("join", scope))


def basis_program(scope: str, planes: tuple[str, ...]) -> Program[dict[str, dict[str, object]]]:
    """The applied basis of each plane, all read in one snapshot."""
    out: dict[str, dict[str, object]] = {}
    for plane in planes:
        rows = yield from checkpoints_program(scope, plane)
        out[plane] = basis_of(plane_stream(plane, scope), rows)
    return out
