"""The checkpoint audit trail: one ``checkpoint_rewinds`` row per operator move of a checkpoint.

Checkpoints move forward with the commits of ``ctxplane run`` and a replay; every other move is an
operator's (``checkpoint rewind``, ``checkpoint reset``, the offset-rollback drill) and is recorded
in the same transaction as the move: when, which partition, from and to, what moved it, who, why,
and how many offsets a forward move skipped (migrations 0002 and 0005). The table keeps its first
name: it held rewinds only before resets could move a checkpoint forward. Its SQL is in
actors/tables/checkpoints.py.
"""

from __future__ import annotations

import getpass
import os
import socket
from dataclasses import dataclass
from typing import Any, Literal

from ctxplane.actors.tables import checkpoints
from ctxplane.runtime.store import Execute, Program

__all__ = ("AuditEntry", "audit_move", "operator_identity", "recent_moves_program")


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """What an audited move records besides the positions: the command, who, and why."""

    command: Literal["rewind", "reset", "drill"]
    operator: str | None = None
    reason: str | None = None


def operator_identity() -> str:
    """``USER@HOST``: who runs an audited command when ``--operator`` / ``--by`` does not say."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no user name for this uid (a container)
        user = f"uid-{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def audit_move(
    entry: AuditEntry, *, at: str, scope: str, topic: str, partition: int, from_offset: str, to_offset: str,
    skipped: int,
) -> Execute:
    """The audit row of one move (run it in the transaction that moves the checkpoint)."""
    return checkpoints.audit_row(at=at, scope=scope, topic=topic, partition=partition, from_offset=from_offset,
                                 to_offset=to_offset, command=entry.command, operator=entry.operator,
                                 reason=entry.reason, skipped=skipped)


def recent_moves_program(scope: str, limit: int) -> Program[list[dict[str, Any]]]:
    """The newest ``limit`` audited moves in ``scope``, newest first."""
    rows = yield from checkpoints.recent_moves_program(scope, limit)
    keys = ("at_utc", "topic", "partition", "from_offset", "to_offset", "command", "operator", "reason", "skipped")
    return [dict(zip(keys, row, strict=True)) for row in rows]
