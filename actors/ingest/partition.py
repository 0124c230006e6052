"""The partition actor: one per (topic, partition); reads, validates, batches, keeps K batches in flight.

Protocol (architecture.md §Message protocols):
- on start it reads its committed checkpoint (the database is the state) and resumes there;
- it reads up to ``batch_max_records`` records, classifies them in the pure intake core, marks the
  late ones against its watermark (contracts/lateness.py), and ``tell``s one :class:`ApplyBatch` to
  the store-writer — waiting when that mailbox is full, which is how backpressure reaches the bus
  reader;
- at most ``inflight_batches`` batches are unacknowledged; :class:`Applied` acks arrive in order;
- when it finds nothing it waits for an ack, a stop, a :class:`~ctxplane.actors.ingest.wakeup.Wake`
  from the bus watcher, or its back-off poll (``actors/ingest/wakeup.py``), then reads again;
- on a graceful stop it stops reading and waits for its in-flight acks before returning, so a clean
  shutdown commits everything it read.
It never moves its read position past what it can re-read after a crash: the committed checkpoint,
not the read cursor, is where a restarted incarnation begins.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.lowlevel
from anyio.abc import TaskStatus

from ctxplane.actors.ingest.progress import IngestProgress
from ctxplane.actors.ingest.wakeup import IdleBackoff
from ctxplane.actors.tables.reads import checkpoints_program
from ctxplane.contracts.classes import Plane
from ctxplane.contracts.intake import IntakeRules, SourceRef, Verdict
from ctxplane.contracts.intake_fast import FastIntake
from ctxplane.contracts.lateness import fold_lateness
from ctxplane.contracts.messages import Applied, ApplyBatch, ApplyFailed
from ctxplane.contracts.timestamps import parse_ts_us
from ctxplane.runtime.bus import EventBus
from ctxplane.runtime.exceptions import CtxplaneError
from ctxplane.runtime.kernel import Actor, ActorContext, ActorRef, ActorState
from ctxplane.runtime.store import StoreBackend

__all__ = ("PartitionActor", "PartitionConfig", "partition_name")


def partition_name(topic: str, partition: int) -> str:
    return f"partition:{topic}:{partition}"



# Records classified between two yields to the event loop (~1 ms of work).
_YIELD_EVERY = 64
# While stopping with batches in flight: how often to check that the store-writer is still alive.
_ACK_RECHECK_S = 0.05
# Batch sequence numbers are ``incarnation << _SEQ_BITS | n``; 2^40 batches outlast any incarnation.
_SEQ_BITS = 40
# Incarnation numbers, process-wide (a counter only ever read through next(): no other state).
_INCARNATIONS = itertools.count(1)


class ApplyRejected(CtxplaneError):
    """The store-writer could not apply a batch and will not retry it: restart from the checkpoint."""


@dataclass(frozen=True, slots=True)
class PartitionConfig:
    plane: Plane
    scope: str
    topic: str
    partition: int
    batch_max_records: int
    batch_max_bytes: int
    inflight_batches: int
    poll_interval_s: float
    allowed_lateness_us: int
    # An idle actor's wait doubles per empty read from poll_interval_s up to this (actors/ingest/wakeup.py).
    idle_poll_max_s: float = 1.0


class PartitionActor(Actor):
    def __init__(
        self,
        config: PartitionConfig,
        *,
        bus: EventBus,
        store: StoreBackend,
        rules: IntakeRules,
        writer: ActorRef,
        progress: IngestProgress,
    ) -> None:
        self.config = config
        self._bus = bus
        self._store = store
        # The same verdicts as rules.classify, a valid event in a fraction of the time.
        self._classify = FastIntake(rules).classify
        self._writer = writer
        self._progress = progress
        self.position: str | None = None
        self.watermark_us: int | None = None
        # Batch numbers of this incarnation: its own high bits, so acks meant for an earlier one are told apart.
        self._seq_base = next(_INCARNATIONS) << _SEQ_BITS

    async def started(self, ctx: ActorContext) -> None:
        cfg = self.config
        rows = await self._store.read(checkpoints_program(cfg.scope))
        for row in rows:
            if row.topic == cfg.topic and row.partition == cfg.partition:
                self.position = row.next_offset
                self.watermark_us = parse_ts_us(row.watermark_ts_utc) if row.watermark_ts_utc else None

    async def run(self, ctx: ActorContext, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        await self.started(ctx)
        task_status.started()
        cfg = self.config
        key = (cfg.topic, cfg.partition)
        inflight: deque[int] = deque()
        seq = self._seq_base
        stopping = False
        backoff = IdleBackoff(cfg.poll_interval_s, cfg.idle_poll_max_s)
        self._progress.register(key)
        while True:
            # Handle whatever already arrived (acks, stop) without waiting.
            while True:
                try:
                    message = ctx.mailbox.get_nowait()
                except anyio.WouldBlock:
                    break
                stopping |= self._handle(ctx, message, inflight)
            if stopping:
                if not inflight or not _writer_alive(self._writer):
                    # Acks come only from the store-writer incarnation that took the batches: if it
                    # crashed (its rest_for_one restart is what stops us), they never will, and
                    # waiting would hold the whole restart for our shutdown timeout. The batches
                    # were not committed; the next incarnation re-reads them from the checkpoint.
                    break
                with anyio.move_on_after(_ACK_RECHECK_S):
                    stopping |= self._handle(ctx, await ctx.mailbox.get(), inflight)
                continue
            if len(inflight) < cfg.inflight_batches:
                batch = await self._next_batch(ctx, seq)
                if batch is not None:
                    backoff.reset()
                    await self._writer.tell(batch)
                    inflight.append(seq)
                    seq += 1
                    continue
                if not inflight:
                    self._progress.idle(key, self.position)
                # Nothing to read: wait for an ack, a stop, a wake from the bus watcher, or the next poll.
                with anyio.move_on_after(backoff.idle()):
                    stopping |= self._handle(ctx, await ctx.mailbox.get(), inflight)
                continue
            # The in-flight window is full: wait for an ack.
            stopping |= self._handle(ctx, await ctx.mailbox.get(), inflight)
        await self.stopping()

    def _handle(self, ctx: ActorContext, message: Any, inflight: deque[int]) -> bool:
        """Process one mailbox item; True when it asks us to stop."""
        if ctx.is_stop(message):
            return True
        payload, reply = ctx.unwrap(message)
        if (type(payload) is Applied or type(payload) is ApplyFailed) and payload.seq >> _SEQ_BITS != self._seq_base >> _SEQ_BITS:
            # The answer to a batch of an earlier incarnation that crashed with it in flight (acks
            # go to the name, so they reach us): not ours. That incarnation's position is gone;
            # we resume from the committed checkpoint, so a batch that did commit is re-read and
            # counted as duplicates, one that did not is simply read again.
            return False
        if type(payload) is Applied:
            expected = inflight.popleft() if inflight else None
            if payload.seq != expected:
                raise CtxplaneError(f"{ctx.name}: ack for batch {payload.seq} but batch {expected} is next")
            self._progress.committed((self.config.topic, self.config.partition), payload.next_offset)
        elif type(payload) is ApplyFailed:
            raise ApplyRejected(f"{ctx.name}: batch {payload.seq} was not applied: {payload.error}")
        if reply is not None:
            reply.send({"position": self.position, "inflight": len(inflight)})
        return False

    async def _next_batch(self, ctx: ActorContext, seq: int) -> ApplyBatch | None:
        cfg = self.config
        result = await self._bus.read(cfg.topic, cfg.partition, self.position, cfg.batch_max_records, cfg.batch_max_bytes)
        if not result.records and result.next_position == self.position:
            return None
        classify = self._classify
        verdicts: list[Verdict] = []
        for index, record in enumerate(result.records):
            if index and not index % _YIELD_EVERY:
                # Let the query actor answer between chunks: a 2000-record batch classifies in
                # tens of milliseconds, which would otherwise be a latency spike for every query.
                await anyio.lowlevel.checkpoint()
            verdicts.append(classify(SourceRef(record.topic, record.partition, record.offset, record.offset_kind),
                                     record.raw, record.full_size))
        marked, watermark = fold_lateness(verdicts, self.watermark_us, cfg.allowed_lateness_us)
        self.position = result.next_position
        self.watermark_us = watermark
        return ApplyBatch(
            plane=cfg.plane, scope=cfg.scope, topic=cfg.topic, partition=cfg.partition,
            offset_kind=self._bus.offset_kind, verdicts=marked, next_offset=result.next_position,
            watermark_us=watermark, seq=seq, reply_to=ctx.self_ref,
        )


def _writer_alive(writer: Any) -> bool:
    """False once the store-writer incarnation our batches went to has ended (crashed or stopped)."""
    state = getattr(writer, "state", ActorState.RUNNING)  # a writer without a state (a wrapper): assume alive
    return state in (ActorState.STARTING, ActorState.RUNNING, ActorState.STOPPING)
