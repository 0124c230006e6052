"""Lease fencing: a process that lost a partition's lease can never commit a batch read under it.

Contract (docs/operations.md §Leases and fencing; the lease table is ``partition_leases``, migration 0003):

- A leased partition actor sends its batches through a :class:`LeasedWriter`, which stamps each
  :class:`ApplyBatch` with ``lease_epoch`` — the epoch of the lease its incarnation was started
  under (``actors/ingest/leases.py`` starts a new incarnation for every new epoch).
- Every ownership change bumps the row's epoch (take, steal, take-over after expiry, release), so
  ``(scope, topic, partition, epoch)`` names exactly one tenure of one owner.
- Step 0 of the apply program (``actors/ingest/apply.py``) runs :func:`fence_program` inside the commit's
  transaction: for each distinct ``(partition, epoch)`` of the group, an
  ``UPDATE partition_leases SET epoch = epoch WHERE ... AND epoch = ? RETURNING epoch``
  (``lock_lease``, actors/tables/leases.py). The UPDATE
  changes nothing, but it **locks the lease row** until the commit (PostgreSQL READ COMMITTED: a
  plain SELECT would not, and a thief could bump the epoch between our check and our commit), and
  if a thief committed first, PostgreSQL re-evaluates the WHERE on the new row version and returns
  no row. So either our commit happens-before the steal (the thief then starts from our
  checkpoint), or the check fails. ``ExecMany`` returns no row counts, hence a ``Fetch`` of
  ``UPDATE ... RETURNING`` (PostgreSQL; SQLite >= 3.35).
- The check runs first in the transaction (step 0), before any effect is written: a stale batch
  writes nothing at all (not even rows another owner is inserting concurrently), and while the
  check's lock is held no thief can take the partition over.
- A failed check raises :class:`LeaseLost` naming every fenced-out tenure: the transaction rolls
  back; the store-writer (:func:`refuse_fenced`) answers those batches ``ApplyFailed(retryable=False, fenced=True)``
  and re-runs the group without them. Nothing of a fenced batch is ever committed. On its way to the
  partition actor the refusal wakes the assigner, which stops the incarnation (see
  :class:`_FenceWatch` for why the actor itself sees an ``Applied``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, Final

import structlog

from ctxplane.actors.tables.leases import lock_lease
from ctxplane.contracts.messages import Applied, ApplyBatch, ApplyFailed
from ctxplane.runtime.exceptions import ActorUnavailable, CtxplaneError
from ctxplane.runtime.store import Program

__all__ = ("FENCED", "LeaseLost", "LeasedWriter", "Tenure", "fence_program", "refuse_fenced")

log = structlog.get_logger("ctxplane.fencing")

#: The error text of a fenced batch's ``ApplyFailed`` (which carries ``fenced=True``) starts with this.
FENCED: Final = "lease lost"

# (scope, topic, partition, epoch): one owner's tenure of one partition.
Tenure = tuple[str, str, int, int]


class LeaseLost(CtxplaneError):
    """The lease some batches were read under is gone: they must not commit.

    Attributes:
        tenures: every fenced-out ``(scope, topic, partition, epoch)`` of the transaction.
    """

    def __init__(self, tenures: Sequence[Tenure]) -> None:
        self.tenures = frozenset(tenures)
        names = ", ".join(f"{t}:{p}@{e}" for _s, t, p, e in sorted(self.tenures))
        super().__init__(f"{FENCED}: {names}")


def tenure_of(batch: ApplyBatch) -> Tenure | None:
    if batch.lease_epoch is None:
        return None
    return (batch.scope, batch.topic, batch.partition, batch.lease_epoch)


def fence_program(batches: Sequence[ApplyBatch]) -> Program[None]:
    """Lock and check the lease row of every leased tenure in ``batches`` (sorted, so two
    transactions always lock lease rows in the same order and never deadlock on them).

    Raises:
        LeaseLost: one or more tenures no longer hold their lease (the caller's transaction must
            roll back, which raising from the program does).
    """
    tenures = sorted({t for t in map(tenure_of, batches) if t is not None})
    lost = []
    for scope, topic, partition, epoch in tenures:
        if not (yield from lock_lease(scope, topic, partition, epoch)):
            lost.append((scope, topic, partition, epoch))
    if lost:
        raise LeaseLost(lost)


async def refuse_fenced(batches: Sequence[ApplyBatch], lost: LeaseLost) -> list[ApplyBatch]:
    """Answer ``ApplyFailed(retryable=False, fenced=True)`` to every batch of a fenced-out tenure; return the
    others (in order) for the store-writer to re-run."""
    kept: list[ApplyBatch] = []
    refused: list[ApplyBatch] = []
    for batch in batches:
        (refused if tenure_of(batch) in lost.tenures else kept).append(batch)
    log.warning("refusing batches read under a lost lease", batches=len(refused), detail=str(lost))
    for batch in refused:
        try:
            await batch.reply_to.tell(ApplyFailed(batch.topic, batch.partition, batch.seq, False, str(lost), fenced=True))
        except ActorUnavailable:
            pass  # the sender is gone already; its lease actor has taken it down
    return kept


class _Tenure:
    """One partition-actor incarnation's lease tenure, shared by its writer and reply watchers."""

    __slots__ = ("epoch", "fenced", "next_offsets")

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.fenced = False
        self.next_offsets: dict[int, str] = {}  # seq -> next_offset of the batches in flight


class _FenceWatch:
    """Forwards the store-writer's replies to the partition actor, handling fencing on the way.

    A fenced refusal is expected, not a fault: the incarnation lost its lease and is about to be
    stopped by the assigner (woken here). Forwarded as a failure it would crash the partition
    actor, and its supervisor would restart it under the same dead epoch — one restart per
    partition, against a restart budget a paused process with many partitions would exhaust. So
    the watcher answers the actor with an ``Applied`` for the refused batch instead: the doomed
    incarnation's in-memory window drains (a graceful stop never waits on it), while nothing was
    committed and the durable checkpoint — where the next owner starts — did not move.
    """

    __slots__ = ("_on_fenced", "_target", "_tenure")

    def __init__(self, target: Any, tenure: _Tenure, on_fenced: Callable[[], None]) -> None:
        self._target = target
        self._tenure = tenure
        self._on_fenced = on_fenced

    async def tell(self, message: object) -> None:
        if type(message) is ApplyFailed and message.fenced:
            tenure = self._tenure
            if not tenure.fenced:
                tenure.fenced = True
                log.warning("partition fenced out: its lease moved on; stopping it", topic=message.topic,
                            partition=message.partition, epoch=tenure.epoch)
                self._on_fenced()
            next_offset = tenure.next_offsets.pop(message.seq, None)
            if next_offset is not None:
                message = Applied(message.topic, message.partition, message.seq, next_offset)
        elif type(message) is Applied:
            self._tenure.next_offsets.pop(message.seq, None)
        await self._target.tell(message)


class LeasedWriter:
    """Stands in for the store-writer's ref in one leased partition-actor incarnation.

    Every :class:`ApplyBatch` told through it leaves stamped with ``epoch``; its replies pass
    through a :class:`_FenceWatch`. Other messages pass unchanged.
    """

    __slots__ = ("_on_fenced", "_tenure", "_writer")

    def __init__(self, writer: Any, epoch: int, on_fenced: Callable[[], None]) -> None:
        self._writer = writer
        self._tenure = _Tenure(epoch)
        self._on_fenced = on_fenced

    @property
    def epoch(self) -> int:
        return self._tenure.epoch

    @property
    def fenced(self) -> bool:
        """Whether a batch of this incarnation was refused for a lost lease."""
        return self._tenure.fenced

    async def tell(self, message: object) -> None:
        if type(message) is ApplyBatch:
            tenure = self._tenure
            tenure.next_offsets[message.seq] = message.next_offset
            message = replace(
                message, lease_epoch=tenure.epoch, reply_to=_FenceWatch(message.reply_to, tenure, self._on_fenced)
            )
        await self._writer.tell(message)
