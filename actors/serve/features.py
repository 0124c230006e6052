"""The feature plane inside the actor tree: its writes (store-writer) and its answers (query actor).

Writes: for every new traffic event and every feature key it carries, one raw row (exact window
edges) and merged tile deltas (cheap windows) — commutative upserts, in the apply transaction.
Answers: one read snapshot per request (checkpoints, retention cut-off, the rows each window plan
needs), turned into a snapshot with provenance by the pure core (``ctxplane.contracts.features.serve``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import orjson

from ctxplane.actors.serve.engine import wait_budget_ms
from ctxplane.actors.tables.checkpoints import checkpoints_program
from ctxplane.actors.tables.features import (
    FeatureTableWriter,
    key_seen_fetch,
    prune_program,
    raw_fetch,
    tiles_fetch,
)
from ctxplane.actors.tables.join import run_pins_program
from ctxplane.actors.tables.reads import plane_stream
from ctxplane.config.settings import Settings
from ctxplane.contracts.answers import ErrorCode, Status
from ctxplane.contracts.features import (
    Agg,
    FeaturePolicy,
    decompose,
    evaluate,
    first_kept_tile,
    load_policy,
    parse_amount,
    run_config_digest,
)
from ctxplane.contracts.features.serve import (
    FeatureRequest,
    FeaturesRead,
    build_snapshot,
    feature_error,
    parse_feature_request,
    pins_refusal,
    served_groups,
    windows_needed,
)
from ctxplane.contracts.features.windows import US_PER_SECOND
from ctxplane.contracts.join import basis_of
from ctxplane.contracts.timestamps import now_utc, parse_ts_us
from ctxplane.runtime.server import peer_gone
from ctxplane.runtime.store import Program

__all__ = ("FeaturePlane", "build_feature_plane")

class FeaturePlane:
    """The feature plane's policy, its writer plug-in and its ``get_features`` answers."""

    def __init__(self, settings: Settings, policy: FeaturePolicy) -> None:
        self.settings = settings
        self.policy = policy
        self.key_types = tuple(policy.key_types())
        self.parse_amount: Callable[[object], int | None] = parse_amount
        self.writer = FeatureTableWriter()
        self.retention_us = (policy.max_ttl_seconds() + int(settings.features.retention_grace_s)) * US_PER_SECOND
        self.run_config_digest = run_config_digest(
            policy, topics=list(settings.features.topics), bus_kind=settings.bus.kind,
            platform_run_id=settings.run.platform_run_id,
        )
        self.scope = settings.run.platform_run_id or "*"
        self.offset_kind = "file_line" if settings.bus.kind == "file" else "kinesis_sequence"

    def prune(self, watermark_us: int) -> Program[int]:
        return prune_program(watermark_us, self.retention_us)

    def read_program(self, request: FeatureRequest) -> Program[FeaturesRead]:
        run, scenario = request.pins["platform_run_id"], request.pins["scenario_run_id"]
        checkpoints = yield from checkpoints_program(self.scope, "features")
        basis = basis_of(plane_stream("features", self.scope), checkpoints)
        # The run's stored pins, in the same snapshot as the values: a request whose pins differ
        # is refused before any value is read (contracts.features.serve.pins_refusal).
        pins_rows = yield from run_pins_program(run, scenario)
        stored_pins = tuple(orjson.loads(row[0]) for row in pins_rows)
        if pins_refusal(request, stored_pins) is not None:
            return FeaturesRead(basis, {}, frozenset(), None, stored_pins)
        # Serve from the retention cut-off implied by the basis itself (newest watermark − retention),
        # not from how far pruning happened to get: two stores at the same basis then answer alike,
        # whatever their pruning history (pruning never passes this cut-off).
        watermark = basis["watermark_ts_utc"]
        cutoff = parse_ts_us(watermark) - self.retention_us if watermark is not None else None
        groups, _missing = served_groups(self.policy, request)
        aggregates: dict[tuple[str, str, int], Agg] = {}
        seen: set[tuple[str, str]] = set()
        for (key_type, key_id), durations in windows_needed(groups, request).items():
            plans = {d: decompose(request.as_of_us - d, request.as_of_us) for d in sorted(durations)}
            tile_ranges: dict[int, list[tuple[int, int]]] = {}
            raw_ranges: list[tuple[int, int]] = []
            for plan in plans.values():
                for level, first, last in plan.tiles:
                    tile_ranges.setdefault(level, []).append((first, last))
                raw_ranges.extend(plan.raw)
            key = (run, scenario, key_type, key_id)
            tile_spans = [(level, first, last) for level in sorted(tile_ranges)
                          for first, last in _disjoint(tile_ranges[level], touching=1)]
            raw_spans = _disjoint(raw_ranges, touching=0)
            tiles = []
            if tile_spans:
                tiles = yield tiles_fetch(key, tile_spans)
            raws = []
            if raw_spans:
                raws = yield raw_fetch(key, raw_spans)
            if cutoff is not None:
                raws = [r for r in raws if r[0] > cutoff]
                tiles = [t for t in tiles if t[1] >= first_kept_tile(cutoff, t[0])]
            for duration, plan in plans.items():
                aggregates[(key_type, key_id, duration)] = evaluate(plan, raws, tiles)
            if tiles or raws:
                seen.add((key_type, key_id))
            else:
                exists = yield key_seen_fetch(key, cutoff)
                if exists:
                    seen.add((key_type, key_id))
        return FeaturesRead(basis, aggregates, frozenset(seen), cutoff, stored_pins)

    async def answer(self, query: Any, request: dict[str, Any], deadline_s: float) -> dict[str, Any]:
        parsed = parse_feature_request(request, max_wait_ms=wait_budget_ms(deadline_s))
        if not isinstance(parsed, FeatureRequest):
            code, detail = parsed
            return feature_error(code, detail, request.get("request_id"), served_at=now_utc())
        if parsed.graph_resolution_mode == "require_ieg":
            return feature_error(ErrorCode.UNAVAILABLE, "require_ieg: no identity graph is configured for this plane",
                                 parsed.request_id, served_at=now_utc())
        until = anyio.current_time() + parsed.wait_ms / 1000
        while True:
            seen = query.commits_seen
            read = await query.store.read(self.read_program(parsed))
            refusal = pins_refusal(parsed, read.stored_pins)
            if refusal is not None:
                # Fail closed, no values: stored pins never change, so waiting cannot help.
                return feature_error(ErrorCode.PINS_MISMATCH, refusal, parsed.request_id, served_at=now_utc())
            watermark = read.basis["watermark_ts_utc"]
            if (watermark is not None and watermark >= parsed.as_of_time_utc) or anyio.current_time() >= until \
                    or peer_gone():
                break
            with anyio.move_on_after(until - anyio.current_time()):
                await query.wait_for_commit(since=seen)
        snapshot = build_snapshot(self.policy, parsed, read, run_config_digest=self.run_config_digest,
                                  offset_kind=self.offset_kind)
        return {"status": Status.OK, "request_id": parsed.request_id, "served_at_utc": now_utc(), "snapshot": snapshot}


def _disjoint(ranges: list[tuple[int, int]], *, touching: int) -> list[tuple[int, int]]:
    """``ranges`` merged into disjoint ones, in order. Inclusive integer ranges (tiles) merge when
    they touch (``touching=1``: [1, 3] and [4, 6] are [1, 6]); half-open (lo, hi] ranges (raw
    timestamps) when they overlap or meet (``touching=0``)."""
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1] + touching:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


def build_feature_plane(settings: Settings) -> FeaturePlane:
    """Load the policy (fails closed with one clear line) and build the plane."""
    from ctxplane.contracts.features import default_policy_path

    path = settings.features.policy or default_policy_path()
    return FeaturePlane(settings, load_policy(path))
