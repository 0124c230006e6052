"""The checkpoints family: ``checkpoints`` (exclusive-next position and watermark per consumed
partition) and its audit trail ``checkpoint_rewinds`` (migrations 0001, 0002, 0005).

A checkpoint moves forward with the commits of the apply program (:func:`advance_program`, forward
only); every other move is an operator's and is written with its audit row (:func:`audit_row`) in
the same transaction (docs/operations.md).
"""

from __future__ import annotations

from collections.abc import Sequence

from ctxplane.actors.tables.keyed import KeySpec, chunks, fetch_by_keys
from ctxplane.contracts.join import CheckpointRow
from ctxplane.contracts.messages import ApplyBatch, PartitionPosition
from ctxplane.contracts.timestamps import format_ts_us
from ctxplane.runtime.store import ExecMany, Execute, Fetch, Program, Row

__all__ = (
    "advance_program",
    "audit_row",
    "checkpoint_details_program",
    "checkpoints_program",
    "insert_checkpoint",
    "max_watermark_program",
    "move_checkpoint",
    "move_count_program",
    "recent_moves_program",
    "stored_offset_program",
)

_KEY: KeySpec = (("scope", "TEXT"), ("topic", "TEXT"), ("partition_id", "INTEGER"))

_UPSERT = (
    "INSERT INTO checkpoints (scope, topic, partition_id, plane, next_offset, offset_kind, watermark_ts_utc,"
    " updated_at_utc) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (scope, topic, partition_id) DO UPDATE SET"
    " next_offset = excluded.next_offset, offset_kind = excluded.offset_kind,"
    " watermark_ts_utc = excluded.watermark_ts_utc, updated_at_utc = excluded.updated_at_utc"
)
_STORED = "SELECT next_offset FROM checkpoints WHERE scope = ? AND topic = ? AND partition_id = ?"
_POSITION = "SELECT next_offset, offset_kind FROM checkpoints WHERE scope = ? AND topic = ? AND partition_id = ?"
_RESTORE = (
    "UPDATE checkpoints SET next_offset = ?, offset_kind = ?, watermark_ts_utc = ?"
    " WHERE scope = ? AND topic = ? AND partition_id = ?"
)
_DROP = "DELETE FROM checkpoints WHERE scope = ? AND topic = ? AND partition_id = ?"
_MOVE = "UPDATE checkpoints SET next_offset = ?, updated_at_utc = ? WHERE scope = ? AND topic = ? AND partition_id = ?"
_INSERT = (
    "INSERT INTO checkpoints (scope, topic, partition_id, plane, next_offset, offset_kind, watermark_ts_utc,"
    " updated_at_utc) VALUES (?, ?, ?, ?, ?, ?, NULL, ?)"
)
_AUDIT_INSERT = (
    "INSERT INTO checkpoint_rewinds (rewound_at_utc, scope, topic, partition_id, from_offset, to_offset,"
    " command, operator, reason, skipped) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


# -- reads ----------------------------------------------------------------------------------------


def checkpoints_program(scope: str, plane: str | None = None) -> Program[tuple[CheckpointRow, ...]]:
    sql = "SELECT topic, partition_id, next_offset, offset_kind, watermark_ts_utc FROM checkpoints WHERE scope = ?"
    params: list[object] = [scope]
    if plane is not None:
        sql += " AND plane = ?"
        params.append(plane)
    rows = yield Fetch(sql + " ORDER BY topic, partition_id", params)
    return tuple(CheckpointRow(*row) for row in rows)


def checkpoint_details_program(scope: str) -> Program[list[Row]]:
    """Every checkpoint of ``scope`` with its plane and commit time: ``(topic, partition_id, plane,
    next_offset, offset_kind, watermark_ts_utc, updated_at_utc)`` rows, by topic and partition."""
    rows = yield Fetch(
        "SELECT topic, partition_id, plane, next_offset, offset_kind, watermark_ts_utc, updated_at_utc"
        " FROM checkpoints WHERE scope = ? ORDER BY topic, partition_id", (scope,))
    return list(rows)


def max_watermark_program(plane: str) -> Program[str | None]:
    """The newest watermark of ``plane`` over every scope (None: no checkpoint carries one)."""
    rows = yield Fetch("SELECT max(watermark_ts_utc) FROM checkpoints WHERE plane = ?", (plane,))
    return rows[0][0] if rows else None


def stored_offset_program(scope: str, topic: str, partition: int) -> Program[str | None]:
    rows = yield Fetch(_STORED, (scope, topic, partition))
    return rows[0][0] if rows else None


def stored_position_program(scope: str, topic: str, partition: int) -> Program[tuple[str, str] | None]:
    """``(next_offset, offset_kind)`` of a partition's checkpoint, or None when it has none."""
    rows = yield Fetch(_POSITION, (scope, topic, partition))
    return (rows[0][0], rows[0][1]) if rows else None


# -- the apply program's step: forward only -------------------------------------------------------


def advance_program(batches: Sequence[ApplyBatch], now: str) -> Program[list[PartitionPosition]]:
    """Advance each touched partition's checkpoint to its newest batch's next offset and watermark,
    never backward (a re-delivered batch behind the checkpoint leaves it where it is); returns the
    positions written, by (scope, topic, partition). One keyed read per 256 partitions, one write."""
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
            "t.scope, t.topic, t.partition_id, t.next_offset, t.watermark_ts_utc", "checkpoints", _KEY, part
        )
        for scope, topic, partition, next_offset, wm in rows:
            stored[(scope, topic, partition)] = (next_offset, wm)
    rows_out = []
    positions = []
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
        positions.append(PartitionPosition(batch.plane, key[1], key[2], next_offset, batch.offset_kind, wm))
    yield ExecMany(_UPSERT, rows_out)
    return positions


# -- operator moves and their audit trail ---------------------------------------------------------


def insert_checkpoint(
    scope: str, topic: str, partition: int, *, plane: str, next_offset: str, offset_kind: str, now: str
) -> Execute:
    """A first checkpoint for a partition that has none (no watermark yet)."""
    return Execute(_INSERT, (scope, topic, partition, plane, next_offset, offset_kind, now))


def move_checkpoint(scope: str, topic: str, partition: int, *, next_offset: str, now: str) -> Execute:
    """Move a stored checkpoint to ``next_offset``, either way (its watermark is kept)."""
    return Execute(_MOVE, (next_offset, now, scope, topic, partition))


def restore_checkpoint(key: tuple[str, str, int], previous: CheckpointRow | None) -> Execute:
    """Put a partition's checkpoint back as ``previous`` was (its position and watermark), or remove it
    when there was none: a replay's window that is not contiguous with the checkpoint leaves it as it was."""
    if previous is None:
        return Execute(_DROP, key)
    return Execute(_RESTORE, (previous.next_offset, previous.offset_kind, previous.watermark_ts_utc, *key))


def audit_row(
    *, at: str, scope: str, topic: str, partition: int, from_offset: str, to_offset: str, command: str,
    operator: str | None, reason: str | None, skipped: int,
) -> Execute:
    """The ``checkpoint_rewinds`` row of one operator move."""
    return Execute(_AUDIT_INSERT, (at, scope, topic, partition, from_offset, to_offset, command, operator, reason,
                                   skipped))


def recent_moves_program(scope: str, limit: int) -> Program[list[Row]]:
    """The newest ``limit`` audited moves in ``scope``, newest first: ``(rewound_at_utc, topic,
    partition_id, from_offset, to_offset, command, operator, reason, skipped)`` rows."""
    rows = yield Fetch(
        "SELECT rewound_at_utc, topic, partition_id, from_offset, to_offset, command, operator, reason, skipped"
        " FROM checkpoint_rewinds WHERE scope = ? ORDER BY rewound_at_utc DESC, topic, partition_id LIMIT ?",
        (scope, limit),
    )
    return list(rows)


def move_count_program(scope: str) -> Program[int]:
    """How many audited moves ``scope`` has had."""
    rows = yield Fetch("SELECT count(*) FROM checkpoint_rewinds WHERE scope = ?", (scope,))
    return int(rows[0][0])
