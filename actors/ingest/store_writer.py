"""The store-writer: owns the write connection, group-commits ApplyBatches, acks after commit.

Commit protocol, per group commit (steps match the code):
  1. take one ApplyBatch, then drain whatever else is already queued (up to a record cap) —
     group commit is the main throughput lever;
  2. run the apply program over all of them in one transaction (begin, write, commit);
  3. on StoreUnavailable, keep the batches and retry with capped exponential backoff (the kernel's
     ``Retry`` over :data:`STORE_RETRY`): no ack, no
     loss, no crash loop — partition actors stall on backpressure meanwhile; on StoreDataError (a
     value the database refuses, which no retry fixes), find the record, ledger it as
     STORE_REJECTED and commit the rest (``actors/ingest/isolate.py``);
  4. after the commit returned, reply ``Applied`` to each batch's sender, in order;
  5. announce ``Committed`` to the checkpoint and query actors (wakes ``wait_ms`` waiters).

Between group commits it also runs :class:`RunWrite` requests (a drill's checkpoint rewind), so such
a write never interleaves with a commit. Like every actor it crashes on the kernel's ``InjectFault``
(drills only, see ``runtime/kernel/faults.py``): the batches drained so far are lost with the
incarnation, as in any crash, and their partitions restart from the checkpoints.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import structlog
from anyio.abc import TaskStatus

from ctxplane.actors.ingest.apply import ApplyOutcome, apply_program
from ctxplane.actors.ingest.fencing import LeaseLost, refuse_fenced
from ctxplane.actors.ingest.isolate import write_isolating
from ctxplane.actors.tables.features import FeatureWriter
from ctxplane.contracts.messages import Applied, ApplyBatch, Committed
from ctxplane.contracts.timestamps import now_utc
from ctxplane.runtime.exceptions import (
    ActorUnavailable,
    CtxplaneError,
    StoreUnavailable,
)
from ctxplane.runtime.kernel import Actor, ActorContext, ActorRef, Backoff, Reply, Retry
from ctxplane.runtime.store import Program, StoreBackend

__all__ = ("RunWrite", "StoreWriter", "StoreWriterConfig", "WriteResult")

T = TypeVar("T")

log = structlog.get_logger("ctxplane.store_writer")

# Prune after this many commits: often enough to bound growth, rare enough to cost nothing.
PRUNE_EVERY = 256
# While the store is unavailable: 50 ms doubling to 2 s, +-20 % so partitions' writers spread out.
STORE_RETRY = Backoff(initial=0.05, maximum=2.0, jitter=0.2)


@dataclass(frozen=True, slots=True)
class StoreWriterConfig:
    group_commit_max_records: int
    retry: Backoff = STORE_RETRY  # between attempts while the store is unavailable (unbounded)


@dataclass(frozen=True, slots=True)
class RunWrite:
    """Ask the store-writer to run ``build()`` as one write transaction between group commits.

    The answer is a :class:`WriteResult`. The program is retried while the store is unavailable
    (like a commit); ``build`` is called once per attempt, so it must return a fresh program.
    """

    build: Callable[[], Program[Any]]
    label: str


@dataclass(frozen=True, slots=True)
class WriteResult:
    """The answer to :class:`RunWrite`: the program's return value, or why it failed."""

    ok: bool
    value: Any = None
    error: str | None = None


class StoreWriter(Actor):
    def __init__(
        self,
        config: StoreWriterConfig,
        *,
        open_store: Callable[[], Awaitable[StoreBackend]],
        subscribers: tuple[ActorRef, ...],
        feature_plane: Any = None,
        observer: Any = None,
        listeners: Sequence[Callable[[ApplyOutcome], None]] = (),
    ) -> None:
        self.config = config
        self._open_store = open_store
        self._subscribers = subscribers
        self._feature_plane = feature_plane
        self._features: FeatureWriter | None = feature_plane.writer if feature_plane is not None else None
        self._feature_watermark: int | None = None
        self._observer = observer
        self._listeners = listeners
        self._store: StoreBackend | None = None
        self._commit_seq = 0
        self._writes: list[tuple[RunWrite, Reply]] = []
        self.available = True
        self._rng = random.Random()  # the jitter of its retries

    async def started(self, ctx: ActorContext) -> None:
        self._store = await self._connect()
        if self._feature_plane is not None:
            # Recorded so `ctxplane digest` can apply the same retention rule from the store alone.
            from ctxplane.actors.tables.features import retention_meta_program

            # Retried, not raised: a failed start counts toward the restart intensity, so a store
            # that drops between connect and this write would turn an outage into a crash loop.
            retention_us = self._feature_plane.retention_us
            await self._write_retrying(lambda: retention_meta_program(retention_us))

    async def _write_retrying(self, build: Callable[[], Program[T]]) -> T:
        """Run ``build()`` in one write transaction, retrying with capped backoff while unavailable."""
        retry = Retry(self.config.retry, rng=self._rng)
        while True:
            assert self._store is not None
            try:
                value = await self._store.write(build())
            except StoreUnavailable as exc:
                self._set_available(False, str(exc))
                await anyio.sleep(retry.failed())
                continue
            self._set_available(True, None)
            return value

    async def _connect(self) -> StoreBackend:
        retry = Retry(self.config.retry, rng=self._rng)
        while True:
            try:
                return await self._open_store()
            except StoreUnavailable as exc:
                self._set_available(False, str(exc))
                await anyio.sleep(retry.failed())

    async def run(self, ctx: ActorContext, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        await self.started(ctx)
        task_status.started()
        try:
            stop = False
            while not stop:
                first = await ctx.mailbox.get()
                if ctx.is_stop(first):
                    break
                # Step 1: one batch, plus whatever is already queued.
                batches, stop = self._drain(ctx, first)
                if batches:
                    await self._commit(batches)
                if self._writes:
                    await self._run_writes()
            await self.stopping()
        finally:
            if self._store is not None:
                with anyio.CancelScope(shield=True):
                    await self._store.aclose()

    def _drain(self, ctx: ActorContext, first: object) -> tuple[list[ApplyBatch], bool]:
        batches: list[ApplyBatch] = []
        records = 0
        message: object = first
        while True:
            payload, reply = ctx.unwrap(message)
            if reply is not None:
                if type(payload) is RunWrite:
                    self._writes.append((payload, reply))  # run after this group commit
                else:
                    reply.send({"commit_seq": self._commit_seq, "available": self.available})
            elif type(payload) is ApplyBatch:
                batches.append(payload)
                records += len(payload.verdicts)
            if records >= self.config.group_commit_max_records:
                return batches, False
            try:
                message = ctx.mailbox.get_nowait()
            except anyio.WouldBlock:
                return batches, False
            if ctx.is_stop(message):
                return batches, True

    def _apply(self, batches: Sequence[ApplyBatch]) -> Program[ApplyOutcome]:
        return apply_program(batches, recorded_at=now_utc(), features=self._features)

    async def _commit(self, batches: list[ApplyBatch]) -> None:
        # Steps 2-3: one transaction; retry while the store is unavailable, holding the batches;
        # a record the store refuses is ledgered and the rest committed.
        retry = Retry(self.config.retry, rng=self._rng)
        started = anyio.current_time()
        while True:
            assert self._store is not None
            try:
                outcome, batches = await write_isolating(self._store, self._apply, batches)
                break
            except LeaseLost as lost:
                # Fenced: batches read under a lost lease never commit; refuse them, re-run the rest.
                batches = await refuse_fenced(batches, lost)
                if not batches:
                    return
                continue
            except StoreUnavailable as exc:
                self._set_available(False, str(exc))
                pause = retry.failed()
                log.warning("store unavailable; holding batches and retrying", error=str(exc),
                            batches=len(batches), retry_in_s=round(pause, 3))
                await anyio.sleep(pause)
        self._set_available(True, None)
        self._commit_seq += 1
        if self._observer is not None:
            self._observer.on_commit(batches, outcome, anyio.current_time() - started)
        for listener in self._listeners:
            listener(outcome)
        # Step 4: acknowledge, in order, only after the commit returned.
        for batch in batches:
            try:
                await batch.reply_to.tell(Applied(batch.topic, batch.partition, batch.seq, batch.next_offset))
            except ActorUnavailable:
                pass  # the sender restarted; it resumes from the committed checkpoint
        # Step 5: announce.
        await self._announce(outcome)
        await self._maybe_prune(outcome)

    async def _run_writes(self) -> None:
        """Answer the queued :class:`RunWrite` requests, in arrival order, one transaction each."""
        writes, self._writes = self._writes, []
        for request, reply in writes:
            try:
                value = await self._write_retrying(request.build)
            except CtxplaneError as exc:  # the program refused (UsageError) or a non-transient StoreError
                log.warning("requested write failed", label=request.label, error=str(exc))
                reply.send(WriteResult(ok=False, error=str(exc)))
            else:
                reply.send(WriteResult(ok=True, value=value))

    async def _maybe_prune(self, outcome: ApplyOutcome) -> None:
        """Retention: every PRUNE_EVERY commits, drop feature state older than the longest ttl."""
        if self._feature_plane is None:
            return
        for pos in outcome.positions:
            if pos.plane.value == "features" and pos.watermark_us is not None:
                self._feature_watermark = max(pos.watermark_us, self._feature_watermark or pos.watermark_us)
        if self._feature_watermark is None or self._commit_seq % PRUNE_EVERY:
            return
        assert self._store is not None
        try:
            await self._store.write(self._feature_plane.prune(self._feature_watermark))
        except StoreUnavailable as exc:
            log.warning("retention pruning skipped; store unavailable", error=str(exc))

    async def _announce(self, outcome: ApplyOutcome) -> None:
        committed = Committed(
            commit_seq=self._commit_seq,
            positions=tuple(outcome.positions),
            touched_flows=frozenset(outcome.touched_flows),
            touched_frames=frozenset(outcome.touched_frames),
            counts=dict(outcome.counts),
        )
        for ref in self._subscribers:
            try:
                await ref.tell(committed)
            except ActorUnavailable:
                pass  # a restarting subscriber rehydrates from the store

    def _set_available(self, available: bool, error: str | None) -> None:
        if available != self.available:
            self.available = available
            if available:
                log.info("store available again")
            if self._observer is not None:
                self._observer.on_store_available(available)
