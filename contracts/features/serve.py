"""``get_features``: request validation and the served snapshot with provenance (contracts.md §4).

Pure: the query actor reads one store snapshot (checkpoints + the rows each window plan needs) and
hands them here. The snapshot names exactly what was served: ``snapshot_hash`` is the SHA-256 of
the canonical snapshot without its wall-clock fields and without the hash itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ctxplane.contracts.answers import RETRYABLE_FEATURE_CODES, ErrorCode, Status
from ctxplane.contracts.canonical import digest
from ctxplane.contracts.envelope import pins_mismatch, pins_problem
from ctxplane.contracts.features.aggregate import Agg, present
from ctxplane.contracts.features.policy import FeatureGroup, FeaturePolicy
from ctxplane.contracts.features.tiles import as_of_beyond_retention
from ctxplane.contracts.limits import is_sql_text
from ctxplane.contracts.timestamps import format_ts_us, parse_instant_us

__all__ = (
    "FeatureRequest",
    "FeaturesRead",
    "build_snapshot",
    "feature_error",
    "parse_feature_request",
    "pins_refusal",
    "snapshot_hash",
)

GRAPH_MODES = ("none", "resolve_if_needed", "require_ieg")
_MAX_KEYS = 256
_MAX_GROUPS = 64


@dataclass(frozen=True, slots=True)
class FeatureRequest:
    request_id: str | None
    pins: dict[str, Any]
    as_of_time_utc: str
    as_of_us: int
    keys: tuple[tuple[str, str], ...]  # requested (key_type, key_id), de-duplicated, in order
    groups: tuple[tuple[str, str], ...]  # requested (name, version), sorted
    graph_resolution_mode: str
    wait_ms: int


@dataclass(frozen=True, slots=True)
class FeaturesRead:
    """What the store held for one request, read in one snapshot."""

    basis: dict[str, Any]  # from ctxplane.contracts.join.basis_of: stream, topics, basis_digest, watermark_ts_utc
    aggregates: Mapping[tuple[str, str, int], Agg]  # (key_type, key_id, duration_us) -> window aggregate
    seen_keys: frozenset[tuple[str, str]]
    retention_cutoff_us: int | None
    # The pins sets the store holds for the request's run (platform_run_id, scenario_run_id).
    stored_pins: tuple[Mapping[str, Any], ...] = ()


def feature_error(code: ErrorCode, detail: str, request_id: Any, *, served_at: str) -> dict[str, Any]:
    retryable = code in RETRYABLE_FEATURE_CODES
    return {"status": Status.ERROR, "code": code, "retryable": retryable, "detail": detail[:2048],
            "request_id": request_id, "served_at_utc": served_at}


def parse_feature_request(request: Mapping[str, Any], *, max_wait_ms: int) -> FeatureRequest | tuple[ErrorCode, str]:
    """Validate a ``get_features`` request; returns the request or ``(code, detail)``."""
    request_id = request.get("request_id")
    if request_id is not None and (not isinstance(request_id, str) or not 0 < len(request_id) <= 128):
        return ErrorCode.INVALID_REQUEST, "request_id must be a string of 1..128 characters"
    pins = request.get("pins")
    problem = pins_problem(pins)
    if problem is not None:
        return problem
    assert isinstance(pins, dict)
    as_of = request.get("as_of_time_utc")
    if as_of is None:
        return ErrorCode.INVALID_REQUEST, "as_of_time_utc is required"
    try:
        # Any RFC 3339 instant; the request carries on (and the answer shows) the canonical form.
        as_of_us = parse_instant_us(as_of)
    except ValueError as exc:
        return ErrorCode.INVALID_REQUEST, f"as_of_time_utc: {exc}"
    as_of = format_ts_us(as_of_us)
    raw_keys = request.get("feature_keys")
    if not isinstance(raw_keys, list) or not 0 < len(raw_keys) <= _MAX_KEYS:
        return ErrorCode.INVALID_REQUEST, f"feature_keys must be a list of 1..{_MAX_KEYS} {{key_type, key_id}} objects"
    keys: list[tuple[str, str]] = []
    for i, key in enumerate(raw_keys):
        if not isinstance(key, dict) or set(key) != {"key_type", "key_id"}:
            return ErrorCode.INVALID_REQUEST, f"feature_keys[{i}] must be an object with key_type and key_id"
        key_type, key_id = key["key_type"], key["key_id"]
        if type(key_id) is int:
            key_id = str(key_id)
        if not is_sql_text(key_type, 64):
            return ErrorCode.INVALID_REQUEST, f"feature_keys[{i}].key_type must be a string of 1..64 characters (no U+0000)"
        if not is_sql_text(key_id, 256):
            return ErrorCode.INVALID_REQUEST, f"feature_keys[{i}].key_id must be a string of 1..256 characters (no U+0000)"
        if (key_type, key_id) not in keys:
            keys.append((key_type, key_id))
    raw_groups = request.get("feature_groups")
    if not isinstance(raw_groups, list) or not 0 < len(raw_groups) <= _MAX_GROUPS:
        return ErrorCode.INVALID_REQUEST, f"feature_groups must be a list of 1..{_MAX_GROUPS} {{name, version}} objects"
    groups: set[tuple[str, str]] = set()
    for i, group in enumerate(raw_groups):
        if not isinstance(group, dict) or set(group) != {"name", "version"}:
            return ErrorCode.INVALID_REQUEST, f"feature_groups[{i}] must be an object with name and version"
        name, version = group["name"], group["version"]
        if not isinstance(name, str) or not 0 < len(name) <= 128 or not isinstance(version, str) or not 0 < len(version) <= 64:
            return ErrorCode.INVALID_REQUEST, f"feature_groups[{i}]: name (1..128) and version (1..64) must be strings"
        groups.add((name, version))
    mode = request.get("graph_resolution_mode", "resolve_if_needed")
    if mode not in GRAPH_MODES:
        return ErrorCode.INVALID_REQUEST, f"graph_resolution_mode must be one of {', '.join(GRAPH_MODES)}"
    wait_ms = request.get("wait_ms", 0)
    if type(wait_ms) is not int or wait_ms < 0:
        return ErrorCode.INVALID_REQUEST, "wait_ms must be a non-negative integer"
    return FeatureRequest(request_id, dict(pins), as_of, as_of_us, tuple(keys), tuple(sorted(groups)), mode,
                          min(wait_ms, max_wait_ms))


def pins_refusal(request: FeatureRequest, stored_pins: Sequence[Mapping[str, Any]]) -> str | None:
    """Why ``request`` may not be served from a run holding ``stored_pins``, or ``None``.

    Feature state is kept per run (``platform_run_id``, ``scenario_run_id``); the pins of what is
    served are the pins sets the store holds for that run. Every pin of the request must equal
    each of them (:func:`~ctxplane.contracts.envelope.pins_mismatch`, the rule of both planes): a
    run whose events carry several pins sets serves no request (its values mix them), and a run
    the store has never seen has nothing to mismatch (its keys are ``MISSING_FEATURE_STATE``).

    Returns:
        the detail of a ``PINS_MISMATCH`` error naming the differing pins, or ``None``.
    """
    differing: list[str] = []
    for stored in stored_pins:
        differing.extend(name for name in pins_mismatch(request.pins, stored) if name not in differing)
    if not differing:
        return None
    return (f"pins differ from the stored pins of run {request.pins['platform_run_id']} / "
            f"{request.pins['scenario_run_id']}: {', '.join(differing)}")


def served_groups(policy: FeaturePolicy, request: FeatureRequest) -> tuple[list[FeatureGroup], list[tuple[str, str]]]:
    """The requested groups the active policy serves, and the ones it does not."""
    found, missing = [], []
    for name, version in request.groups:
        group = policy.group(name, version)
        if group is None:
            missing.append((name, version))
        else:
            found.append(group)
    return found, missing


def windows_needed(groups: Sequence[FeatureGroup], request: FeatureRequest) -> dict[tuple[str, str], set[int]]:
    """(key_type, key_id) -> window durations (µs) to compute for it."""
    need: dict[tuple[str, str], set[int]] = {}
    for key_type, key_id in request.keys:
        for group in groups:
            if key_type in group.key_types:
                need.setdefault((key_type, key_id), set()).update(w.duration_us for w in group.windows)
    return need


def snapshot_hash(snapshot: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical snapshot minus wall-clock fields and the hash itself."""
    return digest({k: v for k, v in snapshot.items() if k not in ("snapshot_hash", "created_at_utc", "served_at_utc")})


def build_snapshot(
    policy: FeaturePolicy,
    request: FeatureRequest,
    read: FeaturesRead,
    *,
    run_config_digest: str,
    offset_kind: str,
) -> dict[str, Any]:
    """The served snapshot (without ``served_at``), ``snapshot_hash`` included."""
    groups, missing_groups = served_groups(policy, request)
    flags: set[str] = set()
    features: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    missing_keys: list[dict[str, str]] = []
    served_key_types = {kt for g in groups for kt in g.key_types}
    beyond_retention = False
    for key_type, key_id in request.keys:
        if key_type not in served_key_types or (key_type, key_id) not in read.seen_keys:
            missing_keys.append({"key_type": key_type, "key_id": key_id})
    for group in groups:
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for key_type, key_id in request.keys:
            if key_type not in group.key_types:
                continue
            per_window: dict[str, dict[str, Any]] = {}
            for window in group.windows:
                agg = read.aggregates.get((key_type, key_id, window.duration_us), Agg.EMPTY)
                per_window[window.window] = present(agg, group.aggregations)
                if read.retention_cutoff_us is not None and as_of_beyond_retention(
                    request.as_of_us, window.duration_us, read.retention_cutoff_us
                ):
                    beyond_retention = True
            out[f"{key_type}:{key_id}"] = per_window
        features[group.name] = out
    watermark = read.basis["watermark_ts_utc"]
    stale = watermark is None or watermark < request.as_of_time_utc
    if missing_keys:
        flags.add("MISSING_FEATURE_STATE")
    if missing_groups:
        flags.add("MISSING_FEATURE_GROUP")
    if stale:
        flags.add("STALE_INPUT_BASIS")
    if beyond_retention:
        flags.add("AS_OF_BEYOND_RETENTION")
    state = "RED" if missing_groups else ("AMBER" if flags else "GREEN")
    offsets = [
        {"topic": topic, "partition": int(partition), "offset": entry["next_offset"]}
        for topic, partitions in sorted(read.basis["topics"].items())
        for partition, entry in sorted(partitions.items(), key=lambda item: int(item[0]))
    ]
    snapshot: dict[str, Any] = {
        "pins": request.pins,
        "as_of_time_utc": request.as_of_time_utc,
        "feature_groups": [{"name": n, "version": v} for n, v in request.groups],
        "feature_def_policy_rev": policy.rev(),
        "eb_offset_basis": {
            "stream": read.basis["stream"],
            "offset_kind": offset_kind,
            "offsets": offsets,
            "basis_digest": read.basis["basis_digest"],
            "window_end_utc": watermark,
        },
        "run_config_digest": run_config_digest,
        "features": features,
        "freshness": {
            "state": state,
            "flags": sorted(flags),
            "stale_groups": [{"name": g.name, "version": g.version} for g in groups] if stale else [],
            "missing_groups": [{"name": n, "version": v} for n, v in missing_groups],
            "missing_feature_keys": missing_keys,
        },
    }
    snapshot["snapshot_hash"] = snapshot_hash(snapshot)
    return snapshot


