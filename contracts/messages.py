"""Messages between actors (docs/architecture.md §Message flows). Frozen, slotted, plain data."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ctxplane.contracts.classes import Plane
from ctxplane.contracts.intake import Verdict

__all__ = ("ApplyBatch", "ApplyFailed", "Applied", "Committed", "PartitionPosition")


@dataclass(frozen=True, slots=True)
class ApplyBatch:
    """Partition actor -> store-writer: apply these verdicts and advance the checkpoint.

    ``verdicts`` are in offset order; ``next_offset`` is the exclusive-next position after the last
    record (blank lines included); ``watermark_us`` is the partition watermark after the batch.
    ``reply_to`` receives :class:`Applied` or :class:`ApplyFailed`.
    """

    plane: Plane
    scope: str
    topic: str
    partition: int
    offset_kind: str
    verdicts: tuple[Verdict, ...]
    next_offset: str
    watermark_us: int | None
    seq: int
    reply_to: Any = field(compare=False, repr=False)
    # Leases (scale-out): the epoch this batch was read under; None when not leased.
    lease_epoch: int | None = None


@dataclass(frozen=True, slots=True)
class Applied:
    """Store-writer -> partition actor: batch ``seq`` is committed (WAL flushed)."""

    topic: str
    partition: int
    seq: int
    next_offset: str


@dataclass(frozen=True, slots=True)
class ApplyFailed:
    """Store-writer -> partition actor: batch ``seq`` was not committed.

    ``fenced``: refused because the lease it was read under is gone (not a fault: the incarnation
    is about to be stopped; see actors/ingest/fencing.py).
    """

    topic: str
    partition: int
    seq: int
    retryable: bool
    error: str
    fenced: bool = False


@dataclass(frozen=True, slots=True)
class PartitionPosition:
    plane: Plane
    topic: str
    partition: int
    next_offset: str
    offset_kind: str
    watermark_us: int | None


@dataclass(frozen=True, slots=True)
class Committed:
    """Store-writer -> checkpoint and query actors, after each commit.

    Wakes ``wait_ms`` waiters (touched flows/frames/feature keys) and keeps lag and basis current.
    """

    commit_seq: int
    positions: tuple[PartitionPosition, ...]
    touched_flows: frozenset[tuple[str, str, str]]  # (platform_run_id, scenario_run_id, flow_id)
    touched_frames: frozenset[tuple[str, str, str, int]]
    counts: dict[str, int]
