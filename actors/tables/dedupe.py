"""The dedupe family: the registry of every event applied (``intake_dedupe``) and the monotone
intake counters per partition (``intake_counters``), migration 0001.

The apply program stages the first occurrence of each accepted event of a commit once
(:data:`STAGE_EVENTS`), counts and reads what the registry holds of them, and registers the rest
with one set-based statement; the join plane's rows are written from the same staged rows
(actors/tables/join.py). Counters explain re-deliveries; they are not part of the state digest.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ctxplane.runtime.store import ExecMany, Fetch, Program, Row, StageTable

__all__ = (
    "DEDUPE_DIGEST",
    "HELD",
    "HELD_COUNT",
    "MISMATCHED",
    "REGISTER",
    "STAGE_EVENTS",
    "bump_counters",
    "counter_totals_program",
    "events_by_run_program",
    "registry_size_program",
)

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

# How many of the staged events the dedupe registry holds already: one row, whatever the group's
# size. (A statement that returns a row per event costs a GIL hand-off per row on SQLite, where
# sqlite3 releases the GIL around every step: see runtime/store/sqlite.py.)
HELD_COUNT = (
    "SELECT count(*) FROM stage_events AS s"
    " JOIN intake_dedupe AS d ON d.platform_run_id = s.platform_run_id AND d.event_class = s.event_class"
    " AND d.event_id = s.event_id"
)
# ... which ones, with the hash the registry holds (only when some, not all, are held) ...
HELD = (
    "SELECT s.platform_run_id, s.event_class, s.event_id, d.payload_hash FROM stage_events AS s"
    " JOIN intake_dedupe AS d ON d.platform_run_id = s.platform_run_id AND d.event_class = s.event_class"
    " AND d.event_id = s.event_id"
)
# ... of the held ones, those whose stored hash differs (when all are held: usually none) ...
MISMATCHED = HELD + " WHERE d.payload_hash <> s.payload_hash"
# ... and register the others (the write lock is held: nothing registers an event in between).
# ``WHERE true`` before ON CONFLICT: SQLite's parser needs it after INSERT ... SELECT ... FROM t.
REGISTER = (
    "INSERT INTO intake_dedupe (platform_run_id, event_class, event_id, payload_hash, scenario_run_id, plane,"
    " topic, partition_id, source_offset, offset_kind, ts_utc)"
    " SELECT platform_run_id, event_class, event_id, payload_hash, scenario_run_id, plane, topic, partition_id,"
    " source_offset, offset_kind, ts_utc FROM stage_events WHERE true"
    " ON CONFLICT (platform_run_id, event_class, event_id) DO NOTHING"
)

# The registry's part of the semantic state digest (actors/operate/digest.py): no bus position.
DEDUPE_DIGEST = (
    "intake_dedupe", "SELECT platform_run_id, event_class, event_id, payload_hash, scenario_run_id FROM intake_dedupe"
)

_COUNTERS_UPSERT = (
    "INSERT INTO intake_counters (scope, topic, partition_id, name, value) VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT (scope, topic, partition_id, name) DO UPDATE SET value = intake_counters.value + excluded.value"
)


def bump_counters(rows: Sequence[Sequence[Any]]) -> ExecMany:
    """Add ``(scope, topic, partition_id, name, n)`` rows to the intake counters."""
    return ExecMany(_COUNTERS_UPSERT, rows)


def counter_totals_program(scope: str) -> Program[dict[str, int]]:
    """Each intake counter of ``scope`` summed over its partitions, by name."""
    rows = yield Fetch("SELECT name, sum(value) FROM intake_counters WHERE scope = ? GROUP BY name ORDER BY name",
                       (scope,))
    return {name: int(value) for name, value in rows}


def registry_size_program() -> Program[int]:
    """How many events the registry holds (every run)."""
    rows = yield Fetch("SELECT count(*) FROM intake_dedupe")
    return int(rows[0][0])


def events_by_run_program() -> Program[list[Row]]:
    """Applied events per run and plane: ``(platform_run_id, scenario_run_id, plane, count,
    first ts_utc, last ts_utc)`` rows. One scan of the registry: an operator command's, not a hot path."""
    rows = yield Fetch(
        "SELECT platform_run_id, scenario_run_id, plane, count(*), min(ts_utc), max(ts_utc)"
        " FROM intake_dedupe GROUP BY platform_run_id, scenario_run_id, plane"
    )
    return list(rows)
