"""``ctxplane checkpoint rewind``: move one checkpoint backward, audited (docs/operations.md
§Checkpoint rewind).

:func:`rewind_checkpoint` moves one checkpoint backward (``ctxplane.actors.operate.checkpoint_reset``
moves many, either way): one transaction sets the new position and appends an audit row to
``checkpoint_rewinds`` (``ctxplane.actors.operate.checkpoint_audit``). The records between the two positions
are re-delivered to the next ``ctxplane run`` and count as duplicates: zero state change.

A rewind refuses while a ``ctxplane run`` works on the store (its lock file on SQLite, its live
partition leases and its query endpoint on PostgreSQL: ``ctxplane.actors.operate.exclusive``), since
two writers would interleave checkpoints. The drill controller runs :func:`rewind_program` inside
the running process instead, between two group commits.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog

from ctxplane.actors.operate.checkpoint_audit import AuditEntry, audit_move
from ctxplane.actors.operate.exclusive import exclusive_store
from ctxplane.actors.resources import scope_of
from ctxplane.actors.tables.checkpoints import move_checkpoint, stored_position_program
from ctxplane.config.settings import Settings
from ctxplane.contracts.timestamps import now_utc
from ctxplane.runtime.bus import FILE_LINE
from ctxplane.runtime.exceptions import UsageError
from ctxplane.runtime.store import Program

__all__ = ("RewindReport", "rewind_checkpoint", "rewind_program")

log = structlog.get_logger("ctxplane.checkpoint")


_REWIND = AuditEntry("rewind")


@dataclass(frozen=True, slots=True)
class RewindReport:
    """An explicit rewind: the checkpoint of ``(scope, topic, partition)`` moved from ``from_offset``
    back to ``to_offset`` at ``rewound_at_utc``."""

    scope: str
    topic: str
    partition: int
    from_offset: str
    to_offset: str
    rewound_at_utc: str

    def summary(self) -> str:
        return (f"rewound {self.topic} partition {self.partition} (scope {self.scope}) "
                f"from offset {self.from_offset} to {self.to_offset}")


def rewind_program(
    scope: str, topic: str, partition: int, *, to_offset: int | None, by: int | None, now: str,
    audit: AuditEntry = _REWIND,
) -> Program[RewindReport]:
    """Move one checkpoint back and append the audit row (``audit`` says who and why), in one
    transaction.

    Exactly one of ``to_offset`` / ``by`` is given. The watermark is kept: re-delivered records are
    duplicates, so nothing is annotated late because of a rewind.

    Raises:
        UsageError: no checkpoint for the partition, not a file-bus checkpoint, or the target is past
            the checkpoint (a rewind never moves forward) or before offset 0.
    """
    if (to_offset is None) == (by is None):
        raise UsageError("give exactly one of --to-offset and --by")
    position = yield from stored_position_program(scope, topic, partition)
    if position is None:
        raise UsageError(f"no checkpoint for {topic} partition {partition} in scope {scope}: nothing to rewind")
    current_text, kind = position
    if kind != FILE_LINE:
        raise UsageError(f"{topic} partition {partition} has a {kind} checkpoint; rewind supports file_line only")
    current = int(current_text)
    if by is not None:
        target = current - by
        if target < 0:
            raise UsageError(f"cannot rewind {topic} partition {partition} by {by}: its checkpoint is at {current}")
    else:
        assert to_offset is not None
        target = to_offset
        if target > current:
            raise UsageError(
                f"--to-offset {target} is past the checkpoint of {topic} partition {partition} ({current}): "
                "a rewind only moves a checkpoint backward"
            )
    yield move_checkpoint(scope, topic, partition, next_offset=str(target), now=now)
    yield audit_move(audit, at=now, scope=scope, topic=topic, partition=partition, from_offset=current_text,
                     to_offset=str(target), skipped=0)
    return RewindReport(scope, topic, partition, current_text, str(target), now)


async def rewind_checkpoint(
    settings: Settings, topic: str, partition: int, *, to_offset: int | None = None, by: int | None = None,
    audit: AuditEntry = _REWIND,
) -> RewindReport:
    """The explicit operator rewind of one partition (``checkpoint reset`` moves several at once).

    Raises:
        UsageError: the topic is not consumed by an enabled plane, or see :func:`rewind_program`.
        StoreError: a ``ctxplane run`` works on the store (stop it first), or the store fails.
    """
    if topic not in settings.topics():
        raise UsageError(f"topic {topic} is not consumed by any enabled plane; nothing to rewind")
    scope = scope_of(settings)
    async with exclusive_store(settings, "rewind a checkpoint") as store:
        report = await store.write(
            rewind_program(scope, topic, partition, to_offset=to_offset, by=by, now=now_utc(), audit=audit))
    log.warning("checkpoint rewound", scope=scope, topic=topic, partition=partition,
                from_offset=report.from_offset, to_offset=report.to_offset)
    return report
