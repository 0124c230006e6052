"""The apply program: one group commit of ApplyBatches as one transaction (both backends).

Steps (the store-writer runs this inside one write transaction; the numbers match the code):
  0. leased batches only: lock and check each lease epoch, else LeaseLost (actors/ingest/fencing.py);
  1. stage the first occurrence of every accepted event once (``stage_events``: COPY on PostgreSQL,
     multi-row INSERTs into a TEMP table on SQLite), count how many the dedupe registry holds
     already (one row), read which ones only when some but not all are held (all held: only those
     whose stored hash differs), and register the rest with one ``INSERT … SELECT … ON CONFLICT DO
     NOTHING``;
  2. classify each record in arrival order: new, duplicate, payload-hash mismatch, rejected, ignored;
  3. write the effects of new events with set-based statements from the staged rows (restaged with
     the new ones only, when some were not new): pins, join role rows and binding claims
     (actors/tables/join.py); feature raw rows and per-commit folded tile deltas
     (actors/tables/features.py); lateness annotations and rejection ledger rows
     (actors/tables/ledger.py);
  4. detect conflicts among the touched frames and flows with one query each over the staged keys,
     which returns only the rows involved in a conflict; the conflict rules are contracts/join_merge.py,
     and every event involved gets a ledger row;
  5. bump the intake counters (actors/tables/dedupe.py, like the registry of step 1);
  6. advance each touched partition's checkpoint (forward only) and watermark
     (actors/tables/checkpoints.py).
The transaction commits after the program returns; only then are batches acknowledged. Every
effect is an idempotent, commutative insert or merge, which is what makes the resulting state
independent of batch sizes, restarts and partition interleaving.

A commit of n records is a fixed handful of statements whatever n: no statement, and no round trip,
is per event.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from ctxplane.actors.ingest.fencing import fence_program
from ctxplane.actors.tables.checkpoints import advance_program
from ctxplane.actors.tables.dedupe import HELD, HELD_COUNT, MISMATCHED, REGISTER, STAGE_EVENTS, bump_counters
from ctxplane.actors.tables.features import FeatureWriter
from ctxplane.actors.tables.join import (
    BINDING_CONFLICTS,
    CLAIMS_FROM_STAGE,
    ROLE_CONFLICTS,
    ROLES_FROM_STAGE,
    record_pins,
)
from ctxplane.actors.tables.ledger import failure_id, record_failures
from ctxplane.contracts.canonical import canonical_json
from ctxplane.contracts.classes import Plane
from ctxplane.contracts.intake import Accepted, Ignored, Rejected, SourceRef
from ctxplane.contracts.join_merge import ClaimRow, Conflict, RoleRow, binding_conflicts, role_conflicts
from ctxplane.contracts.messages import ApplyBatch, PartitionPosition
from ctxplane.contracts.reasons import Reason
from ctxplane.contracts.timestamps import format_ts_us
from ctxplane.runtime.store import CopyRows, Execute, Fetch, Program, Row

__all__ = ("ApplyOutcome", "apply_program")


@dataclass(slots=True)
class ApplyOutcome:
    """What one group commit did, for acknowledgements, notifications and metrics."""

    positions: list[PartitionPosition] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    # Per (topic, partition, outcome) record counts, for metrics.
    partition_counts: Counter[tuple[str, int, str]] = field(default_factory=Counter)
    # Per (plane, topic, partition, reason) counts of ledger rows, for metrics.
    failures: Counter[tuple[str, str, int, str]] = field(default_factory=Counter)
    touched_flows: set[tuple[str, str, str]] = field(default_factory=set)
    touched_frames: set[tuple[str, str, str, int]] = field(default_factory=set)
    touched_feature_keys: set[tuple[str, str, str, str]] = field(default_factory=set)


class _Ledger:
    """Collects ledger rows for one transaction (deduplicated by failure id)."""

    def __init__(self, recorded_at: str, outcome: ApplyOutcome) -> None:
        self.rows: dict[str, Row] = {}
        self._recorded_at = recorded_at
        self._outcome = outcome

    def add(
        self,
        plane: str,
        source: SourceRef,
        reason: Reason,
        details: dict[str, Any],
        *,
        event_id: str | None,
        event_type: str | None,
        platform_run_id: str | None,
        scenario_run_id: str | None,
    ) -> None:
        fid = failure_id(plane, source, event_id, reason.value)
        if fid in self.rows:
            return
        self.rows[fid] = (
            fid, plane, platform_run_id, scenario_run_id, source.topic, source.partition, source.offset,
            source.offset_kind, event_id, event_type, reason.value,
            orjson.dumps(details, option=orjson.OPT_SORT_KEYS).decode(), self._recorded_at,
        )
        self._outcome.failures[(plane, source.topic, source.partition, reason.value)] += 1


def apply_program(
    batches: Sequence[ApplyBatch],
    *,
    recorded_at: str,
    features: FeatureWriter | None = None,
) -> Program[ApplyOutcome]:
    """Apply ``batches`` (in the given order) as one transaction; see the module docstring."""
    outcome = ApplyOutcome()
    ledger = _Ledger(recorded_at, outcome)
    accepted = [v for batch in batches for v in batch.verdicts if type(v) is Accepted]

    # Step 0 (leases; guards step 6): every leased batch's lease row must still carry its epoch.
    # Checked first and locked until the commit, so a stale batch writes nothing at all and no
    # thief can take the partition over mid-transaction; else LeaseLost rolls back (actors/ingest/fencing.py).
    yield from fence_program(batches)

    # Step 1: stage the first occurrence of every accepted event and register it; the registry
    # answers which events it did not hold yet. For the others, it keeps the hash it holds.
    staged: dict[tuple[str, str, str], Row] = {}
    for v in accepted:
        key = (v.platform_run_id, v.event_class, v.event_id)
        if key not in staged:
            staged[key] = _stage_row(v)
    registry: dict[tuple[str, str, str], str] = {}  # event key -> the payload hash the registry holds
    held = 0
    if staged:
        yield CopyRows(STAGE_EVENTS, list(staged.values()))
        ((held,),) = yield Fetch(HELD_COUNT)
        if held == len(staged):  # all registered before (a redelivery): the staged hash, unless it differs
            registry = {key: row[3] for key, row in staged.items()}
            for run, event_class, event_id, stored_hash in (yield Fetch(MISMATCHED)):
                registry[(run, event_class, event_id)] = stored_hash
        else:
            if held:
                for run, event_class, event_id, stored_hash in (yield Fetch(HELD)):
                    registry[(run, event_class, event_id)] = stored_hash
            yield Execute(REGISTER)

    # Step 2: classify in arrival order.
    new: list[Accepted] = []
    counters: Counter[tuple[str, int, str]] = Counter()
    for batch in batches:
        plane = batch.plane.value
        for verdict in batch.verdicts:
            if type(verdict) is Accepted:
                key = (verdict.platform_run_id, verdict.event_class, verdict.event_id)
                stored = registry.get(key)
                if stored is None:
                    registry[key] = verdict.payload_hash
                    new.append(verdict)
                    counters[(batch.topic, batch.partition, "applied")] += 1
                elif stored == verdict.payload_hash:
                    counters[(batch.topic, batch.partition, "duplicate")] += 1
                else:
                    counters[(batch.topic, batch.partition, "payload_hash_mismatch")] += 1
                    ledger.add(
                        plane, verdict.source, Reason.INTAKE_PAYLOAD_HASH_MISMATCH,
                        {"stored_payload_hash": stored, "payload_hash": verdict.payload_hash},
                        event_id=verdict.event_id, event_type=verdict.event_type,
                        platform_run_id=verdict.platform_run_id, scenario_run_id=verdict.scenario_run_id,
                    )
            elif type(verdict) is Rejected:
                counters[(batch.topic, batch.partition, "rejected")] += 1
                ledger.add(
                    plane, verdict.source, verdict.reason, verdict.details,
                    event_id=verdict.event_id, event_type=verdict.event_type,
                    platform_run_id=verdict.platform_run_id, scenario_run_id=verdict.scenario_run_id,
                )
            elif type(verdict) is Ignored:
                counters[(batch.topic, batch.partition, "ignored")] += 1

    # Step 3: effects of new events, from the staged rows (restaged first if some were not new).
    if new:
        if held:
            yield CopyRows(STAGE_EVENTS, [staged[(v.platform_run_id, v.event_class, v.event_id)] for v in new])
        yield record_pins(new)
        for v in new:
            if v.late:
                reason = Reason.LATE_CONTEXT_EVENT if v.plane is Plane.JOIN else Reason.LATE_TRAFFIC_EVENT
                ledger.add(
                    v.plane.value, v.source, reason,
                    {
                        "event_type": v.event_type, "event_ts_utc": v.ts_utc, "applied": True,
                        "watermark_ts_utc": format_ts_us(v.watermark_us) if v.watermark_us is not None else None,
                    },
                    event_id=v.event_id, event_type=v.event_type,
                    platform_run_id=v.platform_run_id, scenario_run_id=v.scenario_run_id,
                )
        joins = [v for v in new if v.plane is Plane.JOIN]
        if joins:
            yield from _write_join(joins, ledger, outcome)
        traffic = [v for v in new if v.plane is Plane.FEATURES]
        if traffic and features is not None:
            yield from features.write(traffic)
            for v in traffic:
                for key_type, key_id in v.feature_keys:
                    outcome.touched_feature_keys.add((v.platform_run_id, v.scenario_run_id, key_type, key_id))
    if ledger.rows:
        yield record_failures(list(ledger.rows.values()))

    # Step 5: counters.
    scope_of = {(b.topic, b.partition): b.scope for b in batches}
    if counters:
        yield bump_counters(
            [(scope_of[(topic, partition)], topic, partition, name, n) for (topic, partition, name), n in sorted(counters.items())],
        )
        for (_topic, _partition, name), n in counters.items():
            outcome.counts[name] += n
        outcome.partition_counts.update(counters)

    # Step 6: checkpoints, forward only.
    outcome.positions.extend((yield from advance_program(batches, recorded_at)))
    return outcome


def _stage_row(v: Accepted) -> Row:
    source = v.source
    join = v.plane is Plane.JOIN
    return (
        v.platform_run_id, v.event_class, v.event_id, v.payload_hash, v.scenario_run_id, v.plane.value,
        source.topic, source.partition, source.offset, source.offset_kind, v.ts_utc, v.event_type, v.pins_id,
        v.merchant_id, v.arrival_seq, v.role, v.flow_id, canonical_json(v.payload).decode() if join else None,
    )


def _write_join(events: Sequence[Accepted], ledger: _Ledger, outcome: ApplyOutcome) -> Program[None]:
    """Role rows and claims of the staged (new) join events, then step 4 over their frames and flows."""
    yield Execute(ROLES_FROM_STAGE)
    anchors = [v for v in events if v.flow_id is not None]
    if anchors:
        yield Execute(CLAIMS_FROM_STAGE)
    # Step 4: conflicts among touched frames (two events in one role) ...
    # (Every accepted join event has its frame key: intake rejects one without as JOIN_KEY_MISSING.)
    outcome.touched_frames.update({(v.platform_run_id, v.scenario_run_id, v.merchant_id, v.arrival_seq) for v in events
                                   if v.merchant_id is not None and v.arrival_seq is not None})
    roles = yield Fetch(ROLE_CONFLICTS)
    _record_conflicts(ledger, role_conflicts(map(RoleRow._make, roles)))
    if not anchors:
        return
    # ... and among touched bindings (a flow claiming two keys, or a key claimed by two flows).
    outcome.touched_flows.update({(v.platform_run_id, v.scenario_run_id, v.flow_id) for v in events if v.flow_id is not None})
    claims = yield Fetch(BINDING_CONFLICTS)
    _record_conflicts(ledger, binding_conflicts(map(ClaimRow._make, claims)))


def _record_conflicts(ledger: _Ledger, conflicts: Iterable[Conflict[RoleRow] | Conflict[ClaimRow]]) -> None:
    """A ledger row for every event of every conflict (contracts/join_merge.py decides which)."""
    for conflict in conflicts:
        for row in conflict.rows:
            ledger.add(Plane.JOIN.value, row.source, conflict.reason, conflict.details, event_id=row.event_id,
                       event_type=row.event_type, platform_run_id=row.platform_run_id,
                       scenario_run_id=row.scenario_run_id)

