"""Read programs: each answer's inputs read in one store snapshot (both backends), composed from
the table families' reads (actors/tables/join.py, checkpoints.py)."""

from __future__ import annotations

from ctxplane.actors.tables.checkpoints import checkpoints_program
from ctxplane.actors.tables.join import flow_claims_program, frame_roles_program, key_claims_program
from ctxplane.contracts.join import (
    BindingClaim,
    JoinRequest,
    JoinSnapshot,
    RoleEntry,
    basis_of,
)
from ctxplane.runtime.store import Program

# checkpoints_program lives in actors/tables/checkpoints.py; it is named here too for the callers
# that still import it from this module.
__all__ = ("basis_program", "checkpoints_program", "join_snapshot_program", "plane_stream")


def plane_stream(plane: str, scope: str) -> str:
    """The basis stream name of a plane: ``ctxplane.<plane>`` scoped to a pinned run if any."""
    return f"ctxplane.{plane}" if scope == "*" else f"ctxplane.{plane}::{scope}"


def join_snapshot_program(request: JoinRequest, *, scope: str) -> Program[JoinSnapshot]:
    run, scenario = request.pins["platform_run_id"], request.pins["scenario_run_id"]
    flow_claims: tuple[BindingClaim, ...] = ()
    key_claims: tuple[BindingClaim, ...] = ()
    roles: tuple[RoleEntry, ...] = ()
    key = request.key
    if request.flow_id is not None:
        flow_claims = yield from flow_claims_program(run, scenario, request.flow_id)
        if flow_claims:
            first = flow_claims[0]
            key = (run, scenario, first.merchant_id, first.arrival_seq)
    if key is not None:
        key_claims = yield from key_claims_program(run, scenario, key[2], key[3])
        roles = yield from frame_roles_program(run, scenario, key[2], key[3])
    checkpoints = yield from checkpoints_program(scope, "join")
    return JoinSnapshot(flow_claims, key_claims, roles, checkpoints, plane_stream("join", scope))


def basis_program(scope: str, planes: tuple[str, ...]) -> Program[dict[str, dict[str, object]]]:
    """The applied basis of each plane, all read in one snapshot."""
    out: dict[str, dict[str, object]] = {}
    for plane in planes:
        rows = yield from checkpoints_program(scope, plane)
        out[plane] = basis_of(plane_stream(plane, scope), rows)
    return out
