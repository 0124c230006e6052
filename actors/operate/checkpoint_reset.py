"""``ctxplane checkpoint reset``: move consumer checkpoints as a Kafka operator would.

Selection: the partitions of the topics named (``--topic``, repeatable; default every consumed
topic), either named (``--partition``) or all of them (``--all-partitions``): every partition on the
bus plus every one the store holds a checkpoint for. Target, per partition (file-bus positions are
line offsets; the file bus keeps every record, so the earliest position is 0):

- ``earliest``: 0;
- ``latest``: the partition's end (its count of complete lines) when the plan is made;
- ``time``: the offset of the first record whose ``published_at_utc`` (the time the bus took it) is
  at or after the instant, in line order; the end when none is. Lines without a readable
  ``published_at_utc`` (bare envelope lines, junk) never match and are counted as ``untimed``;
- ``offset``: that offset, or the end when it is past it (as Kafka clamps).

A partition's *current* position is its checkpoint, or, without one, where a reader starts
(``bus.start_position``: 0 or the end). Moving **back** re-delivers the records in between to the
next ``ctxplane run``: intake deduplicates them (they count as duplicates, zero state change).
Moving **forward** skips records that are then never applied: refused unless ``allow_skip``, and
audited with the number of offsets skipped. A dry run plans and prints, and writes nothing.

Every partition that moves is moved in **one transaction** together with its audit row
(``ctxplane.actors.operate.checkpoint_audit``), while no process runs on the store
(``ctxplane.actors.operate.exclusive``; the transaction also re-checks leases and that no
checkpoint moved since it was read). The watermark is kept, as a rewind keeps it.

File bus only: a Kinesis checkpoint is the last sequence number read, resumed *after*; "before the
first record" or "before the record at a time" has no such number, so the resumer would need a
position kind of its own (docs/operations.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson
import structlog

from ctxplane.actors.operate.checkpoint_audit import AuditEntry, audit_move
from ctxplane.actors.operate.exclusive import STOP_HINT, exclusive_store, refuse_if_leased
from ctxplane.actors.resources import open_bus, open_current_store, scope_of
from ctxplane.actors.tables.checkpoints import (
    checkpoints_program,
    insert_checkpoint,
    move_checkpoint,
    stored_offset_program,
)
from ctxplane.config.settings import Settings
from ctxplane.contracts.timestamps import format_ts_us, now_utc, parse_instant_us
from ctxplane.runtime.bus import FILE_LINE, BusRecord, EventBus
from ctxplane.runtime.exceptions import StoreError, UsageError
from ctxplane.runtime.store import Program, StoreBackend

__all__ = ("Move", "ResetReport", "ResetTarget", "plan_reset", "reset_checkpoints", "reset_program")

log = structlog.get_logger("ctxplane.checkpoint")

# One read of a --to-time scan: lines are parsed only for their published_at_utc.
_SCAN_RECORDS = 10_000
_SCAN_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ResetTarget:
    """Where to move: ``kind`` and, for ``time`` / ``offset``, the instant (µs) or the offset."""

    kind: Literal["earliest", "latest", "time", "offset"]
    at_us: int | None = None
    offset: int | None = None

    def describe(self) -> str:
        if self.kind == "time":
            assert self.at_us is not None
            return f"--to-time {format_ts_us(self.at_us)}"
        if self.kind == "offset":
            return f"--to-offset {self.offset}"
        return f"--to-{self.kind}"


@dataclass(frozen=True, slots=True)
class Move:
    """One partition's planned move.

    Attributes:
        checkpoint: the stored ``next_offset`` (``None``: no checkpoint yet).
        current: where the next ``ctxplane run`` would read (the checkpoint, else the start position).
        target: where it will read after the reset.
        end: the partition's end when the plan was made.
        untimed: ``time`` targets: lines before ``target`` without a readable ``published_at_utc``.
        clamped: ``offset`` targets: the offset was past the end, so the target is the end.
    """

    plane: str
    topic: str
    partition: int
    checkpoint: str | None
    current: int
    target: int
    end: int
    untimed: int = 0
    clamped: bool = False

    @property
    def change(self) -> Literal["back", "forward", "none"]:
        if self.target < self.current:
            return "back"
        return "forward" if self.target > self.current else "none"

    @property
    def skipped(self) -> int:
        """Offsets a forward move skips: ``current`` .. ``target - 1`` are never applied."""
        return max(0, self.target - self.current)

    @property
    def redelivered(self) -> int:
        """Offsets a backward move reads again (as duplicates)."""
        return max(0, self.current - self.target)

    def as_dict(self) -> dict[str, Any]:
        return {
            "plane": self.plane, "topic": self.topic, "partition": self.partition, "checkpoint": self.checkpoint,
            "current": self.current, "target": self.target, "end": self.end, "change": self.change,
            "skipped": self.skipped, "redelivered": self.redelivered, "untimed": self.untimed, "clamped": self.clamped,
        }


@dataclass(frozen=True, slots=True)
class ResetReport:
    """What a reset planned and, unless ``dry_run``, did (``at_utc``: when, ``None`` for a dry run)."""

    target: ResetTarget
    moves: tuple[Move, ...]
    dry_run: bool
    audit: AuditEntry
    at_utc: str | None

    @property
    def moving(self) -> tuple[Move, ...]:
        return tuple(m for m in self.moves if m.change != "none")

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run, "target": self.target.describe(), "at_utc": self.at_utc,
            "operator": self.audit.operator, "reason": self.audit.reason, "moved": 0 if self.dry_run else len(self.moving),
            "partitions": [m.as_dict() for m in self.moves],
        }


# -- planning ------------------------------------------------------------------------------------


def _published_at_us(record: BusRecord) -> int | None:
    """The record's ``published_at_utc`` in µs, or ``None`` (cut short, not a JSON object, no time)."""
    if record.full_size is not None:
        return None
    try:
        line = orjson.loads(record.raw)
        return parse_instant_us(line["published_at_utc"]) if isinstance(line, dict) else None
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


async def _offset_at(bus: EventBus, topic: str, partition: int, at_us: int, end: int) -> tuple[int, int]:
    """(offset of the first record published at or after ``at_us``, or ``end``; untimed lines before it)."""
    position, untimed = 0, 0
    while position < end:
        result = await bus.read(topic, partition, str(position), _SCAN_RECORDS, _SCAN_BYTES)
        for record in result.records:
            offset = int(record.offset)
            if offset >= end:
                return end, untimed  # published after the plan started: not part of it
            published = _published_at_us(record)
            if published is None:
                untimed += 1
            elif published >= at_us:
                return offset, untimed
        following = int(result.next_position)
        if following == position:
            break  # nothing complete past here
        position = following
    return end, untimed


async def _target(bus: EventBus, topic: str, partition: int, target: ResetTarget, end: int) -> tuple[int, int, bool]:
    """(target offset, untimed lines, clamped) of one partition."""
    if target.kind == "earliest":
        return 0, 0, False
    if target.kind == "latest":
        return end, 0, False
    if target.kind == "offset":
        assert target.offset is not None
        return min(target.offset, end), 0, target.offset > end
    assert target.at_us is not None
    offset, untimed = await _offset_at(bus, topic, partition, target.at_us, end)
    return offset, untimed, False


async def plan_reset(
    settings: Settings, store: StoreBackend, bus: EventBus, *, topics: Sequence[str] | None,
    partitions: Sequence[int] | None, target: ResetTarget,
) -> tuple[Move, ...]:
    """The moves a reset makes, from the store's checkpoints and the bus (reads only).

    Raises:
        UsageError: a topic no enabled plane consumes, a named partition that neither the bus nor the
            store knows, a checkpoint that is not a file-bus one, or an empty selection.
    """
    consumed = settings.topics()
    selected = list(dict.fromkeys(topics)) if topics else sorted(consumed)
    for topic in selected:
        if topic not in consumed:
            raise UsageError(f"topic {topic} is not consumed by any enabled plane; nothing to reset")
    rows = await store.read(checkpoints_program(scope_of(settings)))
    stored = {(row.topic, row.partition): (row.next_offset, row.offset_kind) for row in rows}
    moves = []
    for topic in selected:
        known = sorted(set(await bus.list_partitions(topic)) | {p for t, p in stored if t == topic})
        if partitions is not None:
            missing = [p for p in partitions if p not in known]
            if missing:
                shown = ", ".join(map(str, known)) or "none"
                raise UsageError(f"topic {topic} has no partition {missing[0]} on the bus or in the store "
                                 f"(partitions: {shown})")
            known = sorted(set(partitions))
        for partition in known:
            checkpoint, kind = stored.get((topic, partition), (None, FILE_LINE))
            if kind != FILE_LINE:
                raise UsageError(f"{topic} partition {partition} has a {kind} checkpoint; "
                                 "checkpoint reset moves file-bus (file_line) checkpoints only")
            end = int(await bus.end_position(topic, partition))
            if checkpoint is not None:
                current = int(checkpoint)
            else:
                current = 0 if settings.bus.start_position == "trim_horizon" else end
            offset, untimed, clamped = await _target(bus, topic, partition, target, end)
            moves.append(Move(consumed[topic], topic, partition, checkpoint, current, offset, end, untimed, clamped))
    if not moves:
        raise UsageError(f"no partition of {', '.join(selected)} exists on the bus or in the store: nothing to reset")
    return tuple(moves)


# -- applying ------------------------------------------------------------------------------------

def reset_program(scope: str, moves: Sequence[Move], *, now: str, audit: AuditEntry) -> Program[int]:
    """Move every checkpoint of ``moves`` that changes, each with its audit row, in one transaction;
    returns how many moved. A partition without a checkpoint gets one (at the target).

    Raises:
        StoreError: a live lease exists in the scope, or a checkpoint is no longer what the plan read
            (a process committed meanwhile); the transaction rolls back whole.
    """
    yield from refuse_if_leased("reset checkpoints", scope)
    moved = 0
    for move in moves:
        if move.change == "none":
            continue
        stored = yield from stored_offset_program(scope, move.topic, move.partition)
        if stored != move.checkpoint:
            raise StoreError(
                f"refusing to reset checkpoints: the checkpoint of {move.topic} partition {move.partition} moved "
                f"from {move.checkpoint} to {stored} while the reset was planned (a process is consuming it); "
                f"{STOP_HINT}"
            )
        if stored is None:
            yield insert_checkpoint(scope, move.topic, move.partition, plane=move.plane, next_offset=str(move.target),
                                    offset_kind=FILE_LINE, now=now)
        else:
            yield move_checkpoint(scope, move.topic, move.partition, next_offset=str(move.target), now=now)
        yield audit_move(audit, at=now, scope=scope, topic=move.topic, partition=move.partition,
                         from_offset=str(move.current), to_offset=str(move.target), skipped=move.skipped)
        moved += 1
    return moved


def _refuse_skips(moves: Sequence[Move]) -> None:
    forward = [m for m in moves if m.change == "forward"]
    if not forward:
        return
    first = forward[0]
    more = f" and {len(forward) - 1} more partition(s), {sum(m.skipped for m in forward)} offsets in all" \
        if len(forward) > 1 else ""
    raise UsageError(
        f"refusing to skip forward past {first.skipped} offsets of {first.topic} partition {first.partition} "
        f"({first.current}..{first.target - 1}){more}: their records would never be applied; add --allow-skip to "
        "skip them (audited), or choose a target at or before the checkpoints (see --dry-run)"
    )


async def reset_checkpoints(
    settings: Settings, *, topics: Sequence[str] | None, partitions: Sequence[int] | None, target: ResetTarget,
    dry_run: bool, allow_skip: bool, audit: AuditEntry,
) -> ResetReport:
    """Plan a reset and, unless ``dry_run``, apply it (see the module docstring).

    A dry run only reads, so it runs beside a live process (its figures are then a snapshot).

    Raises:
        UsageError: the deployment is not on the file bus, see :func:`plan_reset`, or a forward move
            without ``allow_skip``.
        StoreError: a process runs on the store (stop it first), or the store fails.
    """
    if settings.bus.kind != "file":
        raise UsageError(
            f"checkpoint reset moves file-bus checkpoints only (bus.kind is {settings.bus.kind}): a Kinesis "
            "checkpoint is the last sequence number read, and no sequence number names the position before a "
            "shard's first record or before the record at a time"
        )
    scope = scope_of(settings)
    async with open_bus(settings) as bus:
        if dry_run:
            store = await open_current_store(settings)
            try:
                moves = await plan_reset(settings, store, bus, topics=topics, partitions=partitions, target=target)
            finally:
                await store.aclose()
            return ResetReport(target, moves, True, audit, None)
        async with exclusive_store(settings, "reset checkpoints") as store:
            moves = await plan_reset(settings, store, bus, topics=topics, partitions=partitions, target=target)
            if not allow_skip:
                _refuse_skips(moves)
            now = now_utc()
            await store.write(reset_program(scope, moves, now=now, audit=audit))
    report = ResetReport(target, moves, False, audit, now)
    for move in report.moving:
        log.warning("checkpoint reset", scope=scope, topic=move.topic, partition=move.partition,
                    from_offset=move.current, to_offset=move.target, change=move.change, skipped=move.skipped,
                    operator=audit.operator, reason=audit.reason, target=target.describe())
    return report
