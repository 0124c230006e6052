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
     the new ones only, when some were not new): pins, join role rows and binding claims; feature
     raw rows and per-commit folded tile deltas (actors/tables/features.py); lateness annotations
     and rejection ledger rows;
  4. detect conflicts among the touched frames and flows with one query each over the staged keys,
     which returns only the rows involved in a conflict, and record every event involved;
  5. bump the intake counters;
  6. advance each touched partition's checkpoint (forward only) and watermark.
The transaction commits after the program returns; only then are batches acknowledged. Every
effect is an idempotent, commutative insert or merge, which is what makes the resulting state
independent of batch sizes, restarts and partition interleaving.

A commit of n records is a fixed handful of statements whatever n: no statement, and no round trip,
is per event.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, TypeAlias

import orjson

from ctxplane.actors.ingest.fencing import fence_program
from ctxplane.actors.tables.features import FeatureWriter
from ctxplane.contracts.canonical import canonical_json, sha256_hex
from ctxplane.contracts.classes import Plane
from ctxplane.contracts.intake import Accepted, Ignored, Rejected, SourceRef
from ctxplane.contracts.join_merge import ClaimRow, Conflict, RoleRow, binding_conflicts, role_conflicts
from ctxplane.contracts.messages import ApplyBatch, PartitionPosition
from ctxplane.contracts.reasons import Reason
from ctxplane.contracts.timestamps import format_ts_us
from ctxplane.runtime.store import CopyRows, ExecMany, Execute, Fetch, Program, Row, StageTable

__all__ = ("STAGE_EVENTS", "ApplyOutcome", "KeySpec", "apply_program", "chunks", "fetch_by_keys")

# Key lookups are split into chunks of at most this many keys: well under both backends' bound-
# parameter limits (SQLite 32766, PostgreSQL 32767) and small enough for good plans. A power of two,
# because chunks are padded to the next power of two (see ``fetch_by_keys``).
_CHUNK = 256

# A lookup key: (column, declared SQL type) pairs, as in migrations/0001_initial.sql. PostgreSQL
# needs the types to type the parameters of a VALUES list: untyped, they would be ``text``, and
# comparing them with an INTEGER/BIGINT column fails ("operator does not exist: bigint = text").
KeySpec: TypeAlias = tuple[tuple[str, str], ...]
_CHECKPOINT_KEY: KeySpec = (("scope", "TEXT"), ("topic", "TEXT"), ("partition_id", "INTEGER"))

# The staged events of one commit: the first occurrence of each accepted event, with every column
# the dedupe registry, the join role rows and the binding claims take from it (NULL where a plane
# has no such field; ``payload_json`` only for the join plane, whose role rows keep the payload).
STAGE_EVENTS = StageTable("stage_events", (
    ("platform_run_id", "TEXT"), ("event_class", "TEXT"), ("event_id", "TEXT"), ("payload_hash", "TEXT"),
    ("scenario_run_id", "TEXT"), ("plane", "TEXT"), ("topic", "TEXT"), ("partition_id", "INTEGER"),
    ("source_offset", "TEXT"), ("offset_kind", "TEXT"), ("ts_utc", "TEXT"), ("event_type", "TEXT"),
    ("pins_id", "TEXT"), ("merchant_id", "TEXT"), ("arrival_seq", "BIGINT"), ("role", "TEXT"),
    ("flow_id", "TEXT"), ("payload_json", "TEXT"),
))

# Step 1: how many of the staged events the dedupe registry holds already: one row, whatever the
# group's size. (A statement that returns a row per event costs a GIL hand-off per row on SQLite,
# where sqlite3 releases the GIL around every step: see runtime/store/sqlite.py.)
_HELD_COUNT = (
    "SELECT count(*) FROM stage_events AS s"
    " JOIN intake_dedupe AS d ON d.platform_run_id = s.platform_run_id AND d.event_class = s.event_class"
    " AND d.event_id = s.event_id"
)
# ... which ones, with the hash the registry holds (only when some, not all, are held) ...
_HELD = (
    "SELECT s.platform_run_id, s.event_class, s.event_id, d.payload_hash FROM stage_events AS s"
    " JOIN intake_dedupe AS d ON d.platform_run_id = s.platform_run_id AND d.event_class = s.event_class"
    " AND d.event_id = s.event_id"
)
# ... of the held ones, those whose stored hash differs (when all are held: usually none) ...
_MISMATCHED = _HELD + " WHERE d.payload_hash <> s.payload_hash"
# ... and register the others (the write lock is held: nothing registers an event in between).
# ``WHERE true`` before ON CONFLICT: SQLite's parser needs it after INSERT ... SELECT ... FROM t.
_REGISTER = (
    "INSERT INTO intake_dedupe (platform_run_id, event_class, event_id, payload_hash, scenario_run_id, plane,"
    " topic, partition_id, source_offset, offset_kind, ts_utc)"
    " SELECT platform_run_id, event_class, event_id, payload_hash, scenario_run_id, plane, topic, partition_id,"
    " source_offset, offset_kind, ts_utc FROM stage_events WHERE true"
    " ON CONFLICT (platform_run_id, event_class, event_id) DO NOTHING"
)
_ROLES_FROM_STAGE = (
    "INSERT INTO join_frame_roles (platform_run_id, scenario_run_id, merchant_id, arrival_seq, role, event_id,"
    " event_type, payload_hash, payload_json, pins_id, ts_utc, topic, partition_id, source_offset, offset_kind)"
    " SELECT platform_run_id, scenario_run_id, merchant_id, arrival_seq, role, event_id, event_type, payload_hash,"
    " payload_json, pins_id, ts_utc, topic, partition_id, source_offset, offset_kind"
    " FROM stage_events WHERE plane = 'join'"
    " ON CONFLICT (platform_run_id, scenario_run_id, merchant_id, arrival_seq, role, event_id) DO NOTHING"
)
_CLAIMS_FROM_STAGE = (
    "INSERT INTO flow_binding_claims (platform_run_id, scenario_run_id, flow_id, merchant_id, arrival_seq,"
    " event_id, event_type, payload_hash, pins_id, ts_utc, topic, partition_id, source_offset, offset_kind)"
    " SELECT platform_run_id, scenario_run_id, flow_id, merchant_id, arrival_seq, event_id, event_type,"
    " payload_hash, pins_id, ts_utc, topic, partition_id, source_offset, offset_kind"
    " FROM stage_events WHERE plane = 'join' AND flow_id IS NOT NULL"
    " ON CONFLICT (platform_run_id, scenario_run_id, flow_id, merchant_id, arrival_seq, event_id) DO NOTHING"
)
_SAME_FRAME = (
    "{o}.platform_run_id = {t}.platform_run_id AND {o}.scenario_run_id = {t}.scenario_run_id"
    " AND {o}.merchant_id = {t}.merchant_id AND {o}.arrival_seq = {t}.arrival_seq"
)
_SAME_FLOW = (
    "{o}.flow_id = {t}.flow_id AND {o}.platform_run_id = {t}.platform_run_id"
    " AND {o}.scenario_run_id = {t}.scenario_run_id"
)
# Step 4, frames: the role rows of the touched frames in a role that holds more than one event.
# One index range scan per touched frame finds the roles in conflict (rare), whose rows are then read.
_ROLE_CONFLICTS = (
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
# Step 4, bindings: of the claims of the touched flows and the claims on the touched frame keys,
# those whose flow also claims another key or whose key is also claimed by another flow. These are
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
_BINDING_CONFLICTS = (
    f"SELECT {_CLAIM_COLUMNS} FROM (SELECT DISTINCT platform_run_id, scenario_run_id, flow_id FROM stage_events"
    " WHERE plane = 'join' AND flow_id IS NOT NULL) AS k"
    f" JOIN flow_binding_claims AS t ON {_SAME_FLOW.format(o='t', t='k')} WHERE {_CONFLICTED_CLAIM}"
    " UNION "
    f"SELECT {_CLAIM_COLUMNS} FROM (SELECT DISTINCT platform_run_id, scenario_run_id, merchant_id, arrival_seq"
    " FROM stage_events WHERE plane = 'join' AND flow_id IS NOT NULL) AS k"
    f" JOIN flow_binding_claims AS t ON {_SAME_FRAME.format(o='t', t='k')} WHERE {_CONFLICTED_CLAIM}"
)


def chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def fetch_by_keys(columns: str, table: str, key: KeySpec, keys: Sequence[tuple[Any, ...]]) -> Fetch:
    """A Fetch of ``columns`` from the rows of ``table`` whose ``key`` is one of ``keys``.

    Rendered as a join with a VALUES list, ``SELECT columns FROM (VALUES (CAST(? AS T), ...), ...)
    AS k JOIN table AS t ON t.col = k.column1 AND ...``, the one shape both backends answer with
    a primary-key lookup per key: on SQLite a row-value ``(a, b) IN (VALUES ...)`` (or ``IN ((?, ?),
    ...)``) scans the whole table (measured: 65 ms for 250 keys against 200k rows, vs 0.6 ms for the
    join), and PostgreSQL plans the join as a nested loop of index scans. The casts give PostgreSQL
    the parameter types.

    ``keys`` must be distinct (a duplicate key would return its rows twice) and at most
    ``_CHUNK`` long. The list is padded with NULL keys (which match nothing) to the next power of
    two, so a handful of distinct SQL strings cover every batch size: the dialect's render cache and
    PostgreSQL's prepared-statement cache stay small and warm.
    """
    size = 1 << max(len(keys) - 1, 0).bit_length()
    params: list[Any] = [value for k in keys for value in k]
    params.extend([None] * (len(key) * (size - len(keys))))
    return Fetch(_keyed_select(columns, table, key, size), params)


@lru_cache(maxsize=256)
def _keyed_select(columns: str, table: str, key: KeySpec, size: int) -> str:
    one = "(" + ", ".join(f"CAST(? AS {sql_type})" for _name, sql_type in key) + ")"
    on = " AND ".join(f"t.{name} = k.column{i}" for i, (name, _type) in enumerate(key, start=1))
    return f"SELECT {columns} FROM (VALUES {', '.join([one] * size)}) AS k JOIN {table} AS t ON {on}"


def failure_id(plane: str, source: SourceRef, event_id: str | None, reason: str) -> str:
    """Deterministic ledger identity: re-recording the same failure is a no-op."""
    text = f"{plane}:{source.topic}:{source.partition}:{source.offset}:{event_id or ''}:{reason}"
    return sha256_hex(text.encode())[:32]


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


_LEDGER_INSERT = (
    "INSERT INTO apply_failures (failure_id, plane, platform_run_id, scenario_run_id, topic, partition_id,"
    " source_offset, offset_kind, event_id, event_type, reason_code, details_json, recorded_at_utc)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (failure_id) DO NOTHING"
)


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
        ((held,),) = yield Fetch(_HELD_COUNT)
        if held == len(staged):  # all registered before (a redelivery): the staged hash, unless it differs
            registry = {key: row[3] for key, row in staged.items()}
            for run, event_class, event_id, stored_hash in (yield Fetch(_MISMATCHED)):
                registry[(run, event_class, event_id)] = stored_hash
        else:
            if held:
                for run, event_class, event_id, stored_hash in (yield Fetch(_HELD)):
                    registry[(run, event_class, event_id)] = stored_hash
            yield Execute(_REGISTER)

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
        pins = {v.pins_id: v for v in new}
        yield ExecMany(
            "INSERT INTO context_pins (pins_id, platform_run_id, scenario_run_id, pins_json) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (pins_id) DO NOTHING",
            [(pid, v.platform_run_id, v.scenario_run_id, canonical_json(v.pins).decode()) for pid, v in pins.items()],
        )
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
        yield ExecMany(_LEDGER_INSERT, list(ledger.rows.values()))

    # Step 5: counters.
    scope_of = {(b.topic, b.partition): b.scope for b in batches}
    if counters:
        yield ExecMany(
            "INSERT INTO intake_counters (scope, topic, partition_id, name, value) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (scope, topic, partition_id, name) DO UPDATE SET value = intake_counters.value + excluded.value",
            [(scope_of[(topic, partition)], topic, partition, name, n) for (topic, partition, name), n in sorted(counters.items())],
        )
        for (_topic, _partition, name), n in counters.items():
            outcome.counts[name] += n
        outcome.partition_counts.update(counters)

    # Step 6: checkpoints, forward only.
    yield from _advance_checkpoints(batches, recorded_at, outcome)
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
    yield Execute(_ROLES_FROM_STAGE)
    anchors = [v for v in events if v.flow_id is not None]
    if anchors:
        yield Execute(_CLAIMS_FROM_STAGE)
    # Step 4: conflicts among touched frames (two events in one role) ...
    # (Every accepted join event has its frame key: intake rejects one without as JOIN_KEY_MISSING.)
    outcome.touched_frames.update({(v.platform_run_id, v.scenario_run_id, v.merchant_id, v.arrival_seq) for v in events
                                   if v.merchant_id is not None and v.arrival_seq is not None})
    roles = yield Fetch(_ROLE_CONFLICTS)
    _record_conflicts(ledger, role_conflicts(map(RoleRow._make, roles)))
    if not anchors:
        return
    # ... and among touched bindings (a flow claiming two keys, or a key claimed by two flows).
    outcome.touched_flows.update({(v.platform_run_id, v.scenario_run_id, v.flow_id) for v in events if v.flow_id is not None})
    claims = yield Fetch(_BINDING_CONFLICTS)
    _record_conflicts(ledger, binding_conflicts(map(ClaimRow._make, claims)))


def _record_conflicts(ledger: _Ledger, conflicts: Iterable[Conflict[RoleRow] | Conflict[ClaimRow]]) -> None:
    """A ledger row for every event of every conflict (contracts/join_merge.py decides which)."""
    for conflict in conflicts:
        for row in conflict.rows:
            ledger.add(Plane.JOIN.value, row.source, conflict.reason, conflict.details, event_id=row.event_id,
                       event_type=row.event_type, platform_run_id=row.platform_run_id,
                       scenario_run_id=row.scenario_run_id)


def _advance_checkpoints(batches: Sequence[ApplyBatch], now: str, outcome: ApplyOutcome) -> Program[None]:
    latest: dict[tuple[str, str, int], ApplyBatch] = {}
    watermark: dict[tuple[str, str, int], int | None] = {}
    for batch in batches:
        key = (batch.scope, batch.topic, batch.partition)
        current = latest.get(key)
        if current is None or int(batch.next_offset) > int(current.next_offset):
            latest[key] = batch
        if batch.watermark_us is not None:
            previous = watermark.get(key)
            watermark[key] = batch.watermark_us if previous is None else max(previous, batch.watermark_us)
    stored: dict[tuple[str, str, int], tuple[str, str | None]] = {}
    keys = sorted(latest)
    for part in chunks(keys):
        rows = yield fetch_by_keys(
            "t.scope, t.topic, t.partition_id, t.next_offset, t.watermark_ts_utc", "checkpoints", _CHECKPOINT_KEY, part
        )
        for scope, topic, partition, next_offset, wm in rows:
            stored[(scope, topic, partition)] = (next_offset, wm)
    rows_out = []
    for key in keys:
        batch = latest[key]
        next_offset = batch.next_offset
        wm = watermark.get(key)
        wm_text = format_ts_us(wm) if wm is not None else None
        position = stored.get(key)
        if position is not None:
            # Never backward: a re-delivered batch behind the checkpoint leaves it where it is.
            if int(position[0]) > int(next_offset):
                next_offset = position[0]
            if position[1] is not None and (wm_text is None or position[1] > wm_text):
                wm_text = position[1]
        rows_out.append((key[0], key[1], key[2], batch.plane.value, next_offset, batch.offset_kind, wm_text, now))
        outcome.positions.append(
            PartitionPosition(batch.plane, key[1], key[2], next_offset, batch.offset_kind, wm)
        )
    yield ExecMany(
        "INSERT INTO checkpoints (scope, topic, partition_id, plane, next_offset, offset_kind, watermark_ts_utc,"
        " updated_at_utc) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (scope, topic, partition_id) DO UPDATE SET"
        " next_offset = excluded.next_offset, offset_kind = excluded.offset_kind,"
        " watermark_ts_utc = excluded.watermark_ts_utc, updated_at_utc = excluded.updated_at_utc",
        rows_out,
    )
