"""Join plane semantics: request validation, frame assembly from role rows, binding resolution, answers.

Pure functions over plain rows read in one store snapshot (contracts.md §3). The frame is the set of
its role entries; a role with two different events is a conflict, and a flow bound to two keys (or a
key claimed by two flows) is a binding conflict — all derived from the stored sets, so the answer
never depends on the order events arrived in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson

from ctxplane.contracts.answers import JOIN_MISSES, Status
from ctxplane.contracts.canonical import digest
from ctxplane.contracts.classes import Role
from ctxplane.contracts.envelope import pins_error, pins_mismatch, pins_problem
from ctxplane.contracts.limits import is_sql_text, sequence_number
from ctxplane.contracts.reasons import Reason

__all__ = (
    "JOIN_OPS",
    "BindingClaim",
    "CheckpointRow",
    "JoinRequest",
    "JoinSnapshot",
    "RoleEntry",
    "answer_join",
    "basis_of",
    "frame_key_json",
    "invalid_join_answer",
    "parse_join_request",
    "pins_mismatch",
)

JOIN_OPS = ("resolve_flow_binding", "fetch_join_frame")
DEFAULT_REQUIRED_ROLES = (Role.ARRIVAL_EVENT.value, Role.FLOW_ANCHOR.value)


@dataclass(frozen=True, slots=True)
class JoinRequest:
    op: str
    request_id: str | None
    pins: dict[str, Any]
    flow_id: str | None
    key: tuple[str, str, str, int] | None  # (platform_run_id, scenario_run_id, merchant_id, arrival_seq)
    wait_ms: int


@dataclass(frozen=True, slots=True)
class RoleEntry:
    role: str
    event_id: str
    event_type: str
    payload_hash: str
    payload_json: str
    pins_json: str
    ts_utc: str
    topic: str
    partition: int
    offset: str
    offset_kind: str


@dataclass(frozen=True, slots=True)
class BindingClaim:
    flow_id: str
    merchant_id: str
    arrival_seq: int
    event_id: str
    event_type: str
    payload_hash: str
    pins_json: str
    ts_utc: str
    topic: str
    partition: int
    offset: str
    offset_kind: str


@dataclass(frozen=True, slots=True)
class CheckpointRow:
    topic: str
    partition: int
    next_offset: str
    offset_kind: str
    watermark_ts_utc: str | None


@dataclass(frozen=True, slots=True)
class JoinSnapshot:
    """Everything one join answer needs, read in one store snapshot."""

    flow_claims: tuple[BindingClaim, ...]  # claims of the requested flow_id
    key_claims: tuple[BindingClaim, ...]  # claims on the resolved key (by any flow)
    roles: tuple[RoleEntry, ...]  # role entries of the resolved key
    checkpoints: tuple[CheckpointRow, ...]  # the join plane's checkpoints
    stream: str


class _Invalid(Exception):
    def __init__(self, detail: str) -> None:
        self.detail = detail


def _text(request: Mapping[str, Any], name: str, max_len: int = 256) -> str | None:
    value = request.get(name)
    if value is None:
        return None
    if type(value) is int and name in ("flow_id", "merchant_id"):
        return str(value)
    if not is_sql_text(value, max_len):
        raise _Invalid(f"{name} must be a string of 1..{max_len} characters (no U+0000)")
    return value


def parse_join_request(request: Mapping[str, Any], *, max_wait_ms: int) -> JoinRequest | tuple[str, str | None]:
    """Validate a join-plane request.

    Returns:
        a :class:`JoinRequest`, or ``(detail, request_id)`` naming the offending field when invalid.
    """
    request_id = request.get("request_id")
    if request_id is not None and (not isinstance(request_id, str) or not 0 < len(request_id) <= 128):
        return "request_id must be a string of 1..128 characters", None
    op = request.get("op") or request.get("query_kind")
    try:
        if op not in JOIN_OPS:
            raise _Invalid(f"op must be one of {', '.join(JOIN_OPS)}")
        problem = pins_error(request.get("pins"))
        if problem is not None:
            raise _Invalid(problem)
        pins = dict(request["pins"])
        flow_id = _text(request, "flow_id")
        raw_key = request.get("join_frame_key")
        if (flow_id is None) == (raw_key is None):
            raise _Invalid("exactly one of flow_id and join_frame_key is required")
        if op == "resolve_flow_binding" and flow_id is None:
            raise _Invalid("resolve_flow_binding needs flow_id")
        if op == "fetch_join_frame" and raw_key is None:
            raise _Invalid("fetch_join_frame needs join_frame_key")
        key = _parse_key(raw_key, pins) if raw_key is not None else None
        wait_ms = request.get("wait_ms", 0)
        if type(wait_ms) is not int or wait_ms < 0:
            raise _Invalid("wait_ms must be a non-negative integer")
    except _Invalid as exc:
        return exc.detail, request_id
    return JoinRequest(op, request_id, pins, flow_id, key, min(wait_ms, max_wait_ms))


def _parse_key(raw: object, pins: Mapping[str, Any]) -> tuple[str, str, str, int]:
    if not isinstance(raw, dict):
        raise _Invalid("join_frame_key must be an object")
    unknown = set(raw) - {"platform_run_id", "scenario_run_id", "merchant_id", "arrival_seq", "run_id"}
    if unknown:
        raise _Invalid(f"join_frame_key.{sorted(unknown)[0]} is not a key field")
    merchant = raw.get("merchant_id")
    if type(merchant) is int:
        merchant = str(merchant)
    if not is_sql_text(merchant, 256):
        raise _Invalid("join_frame_key.merchant_id is required (a string of 1..256 characters, no U+0000)")
    # Bounded to the BIGINT column here: the store would refuse the value (an OverflowError from
    # SQLite, a DataError from PostgreSQL), which is the request's fault, not the store's.
    try:
        seq = sequence_number(raw.get("arrival_seq"))
    except ValueError as exc:
        raise _Invalid(f"join_frame_key.arrival_seq: {exc}") from None
    if seq is None:
        raise _Invalid("join_frame_key.arrival_seq must be a non-negative integer")
    run = raw.get("platform_run_id", pins["platform_run_id"])
    scenario = raw.get("scenario_run_id", pins["scenario_run_id"])
    if run != pins["platform_run_id"] or scenario != pins["scenario_run_id"]:
        # Reading another run's frame with these pins is exactly what run scoping forbids.
        raise _Invalid("join_frame_key run ids differ from the request pins")
    return (run, scenario, merchant, seq)


@lru_cache(maxsize=256)
def _stored_pins(pins_json: str) -> dict[str, Any]:
    """Stored pins, parsed once per distinct text (a run has one set; every row repeats it).
    Shared: never mutated by the answer code (answers copy what they return)."""
    return orjson.loads(pins_json)  # type: ignore[no-any-return]


def basis_of(stream: str, checkpoints: Sequence[CheckpointRow]) -> dict[str, Any]:
    """The applied basis of a plane and its digest (watermark excluded from the digest).

    Every answer carries one, and between two commits every answer has the same: the digest of
    a checkpoint set is computed once (the result is a fresh dict each time, free to change).
    """
    basis = _basis(stream, tuple(checkpoints))
    return {**basis, "topics": {topic: dict(parts) for topic, parts in basis["topics"].items()}}


@lru_cache(maxsize=64)
def _basis(stream: str, checkpoints: tuple[CheckpointRow, ...]) -> dict[str, Any]:
    topics: dict[str, dict[str, dict[str, str]]] = {}
    for cp in sorted(checkpoints, key=lambda c: (c.topic, c.partition)):
        topics.setdefault(cp.topic, {})[str(cp.partition)] = {"next_offset": cp.next_offset, "offset_kind": cp.offset_kind}
    basis = {"stream": stream, "topics": topics}
    watermarks = [cp.watermark_ts_utc for cp in checkpoints if cp.watermark_ts_utc]
    return {**basis, "basis_digest": digest(basis), "watermark_ts_utc": max(watermarks) if watermarks else None}


def _ref(topic: str, partition: int, offset: str, offset_kind: str, event_id: str, event_type: str, ts_utc: str) -> dict[str, Any]:
    return {"topic": topic, "partition": partition, "offset": offset, "offset_kind": offset_kind,
            "event_id": event_id, "event_type": event_type, "ts_utc": ts_utc}


def _ref_text(ref: Mapping[str, Any]) -> str:
    return (f"topic={ref['topic']};partition={ref['partition']};offset={ref['offset']};"
            f"offset_kind={ref['offset_kind']};event_id={ref['event_id']};event_type={ref['event_type']}")


def _claim_ref(c: BindingClaim) -> dict[str, Any]:
    return _ref(c.topic, c.partition, c.offset, c.offset_kind, c.event_id, c.event_type, c.ts_utc)


def _entry_ref(e: RoleEntry) -> dict[str, Any]:
    return _ref(e.topic, e.partition, e.offset, e.offset_kind, e.event_id, e.event_type, e.ts_utc)


def _first(items: Sequence[Any]) -> Any:
    """The deterministic representative of a set of evidence rows: earliest event time, then id."""
    return min(items, key=lambda x: (x.ts_utc, x.event_id))


def _frame(key: tuple[str, str, str, int], roles: Sequence[RoleEntry], required: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    by_role: dict[str, list[RoleEntry]] = {}
    for entry in roles:
        by_role.setdefault(entry.role, []).append(entry)
    conflicts = sorted(role for role, entries in by_role.items() if len(entries) > 1)
    frame: dict[str, Any] = {
        "join_frame_key": {"platform_run_id": key[0], "scenario_run_id": key[1], "merchant_id": key[2], "arrival_seq": key[3]},
        "context_complete": all(role in by_role for role in required) and not conflicts,
        "roles_present": sorted(by_role),
        "role_conflicts": conflicts,
    }
    for role, entries in sorted(by_role.items()):
        entry = _first(entries)
        frame[role] = orjson.loads(entry.payload_json)
        frame[f"{role}_ref"] = _entry_ref(entry)
        if role == Role.FLOW_ANCHOR.value:
            frame["flow_id"] = frame[role].get("flow_id")
    return frame, conflicts


def answer_join(
    request: JoinRequest,
    snap: JoinSnapshot,
    *,
    resolved_at: str,
    required_roles: Sequence[str] = DEFAULT_REQUIRED_ROLES,
    lag: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Build the join-plane answer (contracts.md §3 table) from one snapshot."""
    basis = basis_of(snap.stream, snap.checkpoints)
    response: dict[str, Any] = {
        "request_id": request.request_id,
        "status": None,
        "reason_codes": [],
        "pins": request.pins,
        "resolved_at_utc": resolved_at,
        "basis": {"basis_digest": basis["basis_digest"], "watermark_ts_utc": basis["watermark_ts_utc"]},
    }
    if request.flow_id is not None:
        response["flow_id"] = request.flow_id

    def done(status: Status, reason: Reason) -> dict[str, Any]:
        response["status"] = status
        response["reason_codes"] = [reason.value]
        if status in JOIN_MISSES and lag is not None:
            response["lag"] = dict(lag)
        return response

    evidence: list[dict[str, str]] = []
    key = request.key
    if request.op == "resolve_flow_binding":
        if not snap.flow_claims:
            return done(Status.MISSING_BINDING, Reason.FLOW_BINDING_NOT_FOUND)
        # Every claim served (this flow's, and other flows' claims on its key, named in a binding
        # conflict) must carry the request's pins: one rule with the frame and the feature plane.
        if any(pins_mismatch(request.pins, _stored_pins(c.pins_json)) for c in (*snap.flow_claims, *snap.key_claims)):
            return done(Status.CONFLICT, Reason.PINS_MISMATCH)
        claim = _first(snap.flow_claims)
        key = (request.pins["platform_run_id"], request.pins["scenario_run_id"], claim.merchant_id, claim.arrival_seq)
        response["join_frame_key"] = frame_key_json(key)
        keys = {(c.merchant_id, c.arrival_seq) for c in snap.flow_claims}
        flows = {c.flow_id for c in snap.key_claims}
        if len(keys) > 1 or len(flows) > 1:
            response["conflict"] = {"join_frame_keys": [list(k) for k in sorted(keys)], "flow_ids": sorted(flows)}
            return done(Status.CONFLICT, Reason.FLOW_BINDING_CONFLICT)
        response["flow_binding"] = {
            "flow_id": claim.flow_id,
            "join_frame_key": frame_key_json(key),
            "source_event": {"event_id": claim.event_id, "event_type": claim.event_type, "ts_utc": claim.ts_utc,
                             "eb_ref": {"topic": claim.topic, "partition": claim.partition, "offset": claim.offset,
                                        "offset_kind": claim.offset_kind}},
            "authoritative_source_event_type": claim.event_type,
            "payload_hash": claim.payload_hash,
            "pins": orjson.loads(claim.pins_json),
            "bound_at_utc": claim.ts_utc,
        }
        evidence.append({"kind": "flow_binding_source_event", "ref": _ref_text(_claim_ref(claim))})
    assert key is not None
    response["join_frame_key"] = frame_key_json(key)
    if not snap.roles:
        return done(Status.MISSING_JOIN_FRAME, Reason.JOIN_FRAME_NOT_FOUND)
    for entry in snap.roles:
        if pins_mismatch(request.pins, _stored_pins(entry.pins_json)):
            return done(Status.CONFLICT, Reason.PINS_MISMATCH)
    frame, conflicts = _frame(key, snap.roles, required_roles)
    response["context_refs"] = {role: frame[f"{role}_ref"] for role in frame["roles_present"]}
    for role in frame["roles_present"]:
        evidence.append({"kind": "join_frame_source_event", "ref": _ref_text(frame[f"{role}_ref"])})
    sources = {(frame[f"{role}_ref"]["topic"], frame[f"{role}_ref"]["partition"]) for role in frame["roles_present"]}
    for cp in snap.checkpoints:
        if (cp.topic, cp.partition) in sources:
            evidence.append({"kind": "join_checkpoint", "ref": (
                f"topic={cp.topic};partition={cp.partition};next_offset={cp.next_offset};"
                f"offset_kind={cp.offset_kind};watermark_ts_utc={cp.watermark_ts_utc}")})
    response["evidence_refs"] = evidence
    if request.op == "fetch_join_frame":
        response["join_frame"] = frame
    if conflicts:
        response["join_frame"] = frame
        return done(Status.CONFLICT, Reason.JOIN_FRAME_ROLE_CONFLICT)
    if not frame["context_complete"]:
        response["join_frame"] = frame
        return done(Status.MISSING_JOIN_FRAME, Reason.JOIN_FRAME_INCOMPLETE)
    response["join_frame"] = frame
    return done(Status.READY, Reason.READY)


def frame_key_json(key: tuple[str, str, str, int]) -> dict[str, Any]:
    """A frame key ``(platform_run_id, scenario_run_id, merchant_id, arrival_seq)`` as answers and the ledger show it."""
    return {"platform_run_id": key[0], "scenario_run_id": key[1], "merchant_id": key[2], "arrival_seq": key[3]}


def invalid_join_answer(detail: str, request: Mapping[str, Any], request_id: str | None, *, resolved_at: str) -> dict[str, Any]:
    """The answer to a request :func:`parse_join_request` refused (``detail`` names the field).

    Status ``INVALID_REQUEST`` (the origin's enum); the reason code — also in ``code`` — is
    ``MISSING_PINS`` when the refusal is a required pin the request omits, else ``INVALID_REQUEST``.
    Never retryable: the same request fails the same way.
    """
    raw_pins = request.get("pins")
    pins = raw_pins if isinstance(raw_pins, dict) else None
    problem = pins_problem(raw_pins)
    code = problem[0] if problem is not None and problem[1] == detail else Reason.INVALID_REQUEST.value
    return {
        "request_id": request_id,
        "status": Status.INVALID_REQUEST,
        "reason_codes": [code],
        # Like every error answer of every op: a code, whether a retry can help, and why.
        "code": code,
        "retryable": False,
        "detail": detail,
        "pins": pins,
        "resolved_at_utc": resolved_at,
    }
