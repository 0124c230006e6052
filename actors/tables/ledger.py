"""The ledger family: ``apply_failures``, one row per rejected, mismatched, conflicting or late
event (migration 0001; docs/events.md §The apply-failure ledger).

A row's identity is deterministic (:func:`failure_id`), so recording the same failure again, after
a restart or a replay, is a no-op.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ctxplane.contracts.canonical import sha256_hex
from ctxplane.contracts.intake import SourceRef
from ctxplane.runtime.store import ExecMany, Fetch, Program, Row

__all__ = (
    "LEDGER_DIGEST",
    "event_reasons_program",
    "failure_id",
    "reason_counts_program",
    "reason_summary_program",
    "recent_failures_program",
    "record_failures",
)

_INSERT = (
    "INSERT INTO apply_failures (failure_id, plane, platform_run_id, scenario_run_id, topic, partition_id,"
    " source_offset, offset_kind, event_id, event_type, reason_code, details_json, recorded_at_utc)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (failure_id) DO NOTHING"
)

# The ledger digest's rows (actors/operate/digest.py): no wall-clock column, no details.
LEDGER_DIGEST = (
    "apply_failures",
    "SELECT plane, reason_code, event_id, event_type, topic, partition_id, source_offset, offset_kind"
    " FROM apply_failures",
)


def failure_id(plane: str, source: SourceRef, event_id: str | None, reason: str) -> str:
    """Deterministic ledger identity: re-recording the same failure is a no-op."""
    text = f"{plane}:{source.topic}:{source.partition}:{source.offset}:{event_id or ''}:{reason}"
    return sha256_hex(text.encode())[:32]


def record_failures(rows: Sequence[Sequence[Any]]) -> ExecMany:
    """Insert ledger rows (every column, in the table's order); one already recorded is kept."""
    return ExecMany(_INSERT, rows)


def reason_counts_program(since_utc: str | None = None) -> Program[dict[str, int]]:
    """Ledger rows per reason code: all of them, or those recorded after ``since_utc``."""
    if since_utc is None:
        rows = yield Fetch("SELECT reason_code, count(*) FROM apply_failures GROUP BY reason_code")
    else:
        rows = yield Fetch(
            "SELECT reason_code, count(*) FROM apply_failures WHERE recorded_at_utc > ? GROUP BY reason_code",
            (since_utc,))
    return {reason: int(n) for reason, n in rows}


def reason_summary_program() -> Program[list[Row]]:
    """``(reason_code, rows, newest recorded_at_utc)`` per reason, by reason code."""
    rows = yield Fetch("SELECT reason_code, count(*), max(recorded_at_utc) FROM apply_failures GROUP BY reason_code"
                       " ORDER BY reason_code")
    return list(rows)


def recent_failures_program(excluding: tuple[str, str], limit: int) -> Program[list[Row]]:
    """The newest ``limit`` rows whose reason is neither of ``excluding``, newest first, every
    column (``details_json`` as stored)."""
    rows = yield Fetch(
        "SELECT failure_id, plane, platform_run_id, scenario_run_id, topic, partition_id, source_offset, offset_kind,"
        " event_id, event_type, reason_code, details_json, recorded_at_utc FROM apply_failures"
        " WHERE reason_code NOT IN (?, ?) ORDER BY recorded_at_utc DESC, failure_id LIMIT ?",
        (*excluding, limit),
    )
    return list(rows)


def event_reasons_program() -> Program[frozenset[tuple[str | None, str]]]:
    """The distinct (event_id, reason_code) pairs of the ledger."""
    rows = yield Fetch("SELECT DISTINCT event_id, reason_code FROM apply_failures")
    return frozenset((event_id, reason) for event_id, reason in rows)
