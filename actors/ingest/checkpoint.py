"""The checkpoint actor: committed offsets, watermarks and lag per partition, kept current by commits.

It rehydrates from the store's checkpoints on start, follows ``Committed`` announcements, and polls
the bus for each partition's end position so it can report lag. It answers ``ask("positions")``
with a plain snapshot that the query and health actors use.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.abc import TaskStatus

from ctxplane.actors.tables.reads import checkpoints_program
from ctxplane.contracts.messages import Committed
from ctxplane.contracts.timestamps import format_ts_us, parse_ts_us
from ctxplane.runtime.bus import EventBus
from ctxplane.runtime.exceptions import BusError
from ctxplane.runtime.kernel import Actor, ActorContext
from ctxplane.runtime.store import StoreBackend

__all__ = ("CheckpointActor", "PartitionStatus")


@dataclass(slots=True)
class PartitionStatus:
    plane: str
    topic: str
    partition: int
    next_offset: str | None = None
    offset_kind: str | None = None
    watermark_us: int | None = None
    end: str | None = None
    committed_at: float | None = None  # wall clock (time.time) of the last commit seen

    def lag(self, bus: EventBus) -> int | None:
        if self.end is None:
            return None
        if self.next_offset is None:
            return bus.lag("0", self.end) if self.offset_kind in (None, "file_line") else None
        return bus.lag(self.next_offset, self.end)


class CheckpointActor(Actor):
    def __init__(self, *, store: StoreBackend, bus: EventBus, scope: str, partitions: dict[tuple[str, int], str],
                 end_poll_s: float = 1.0) -> None:
        self._store = store
        self._bus = bus
        self._scope = scope
        self._end_poll_s = end_poll_s
        self.status: dict[tuple[str, int], PartitionStatus] = {
            key: PartitionStatus(plane, key[0], key[1]) for key, plane in partitions.items()
        }
        self.last_commit_at: float | None = None
        self.commits = 0

    async def started(self, ctx: ActorContext) -> None:
        for row in await self._store.read(checkpoints_program(self._scope)):
            status = self.status.get((row.topic, row.partition))
            if status is None:
                continue
            status.next_offset = row.next_offset
            status.offset_kind = row.offset_kind
            status.watermark_us = parse_ts_us(row.watermark_ts_utc) if row.watermark_ts_utc else None

    async def run(self, ctx: ActorContext, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        await self.started(ctx)
        task_status.started()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._poll_ends)
            while True:
                message = await ctx.mailbox.get()
                if ctx.is_stop(message):
                    break
                payload, reply = ctx.unwrap(message)
                if type(payload) is Committed:
                    self._apply(payload)
                elif reply is not None:
                    reply.send(self.snapshot())
            tg.cancel_scope.cancel()
        await self.stopping()

    def track(self, plane: str, topic: str, partition: int) -> None:
        self.status.setdefault((topic, partition), PartitionStatus(plane, topic, partition))

    def _apply(self, committed: Committed) -> None:
        now = time.time()
        self.commits += 1
        self.last_commit_at = now
        for pos in committed.positions:
            status = self.status.setdefault((pos.topic, pos.partition), PartitionStatus(pos.plane.value, pos.topic, pos.partition))
            status.next_offset = pos.next_offset
            status.offset_kind = pos.offset_kind
            if pos.watermark_us is not None:
                status.watermark_us = max(pos.watermark_us, status.watermark_us or pos.watermark_us)
            status.committed_at = now

    async def _poll_ends(self) -> None:
        while True:
            for status in list(self.status.values()):
                try:
                    status.end = await self._bus.end_position(status.topic, status.partition)
                except (BusError, OSError):
                    status.end = None
            await anyio.sleep(self._end_poll_s)

    def snapshot(self) -> dict[str, Any]:
        partitions = []
        for (topic, partition), s in sorted(self.status.items()):
            partitions.append({
                "plane": s.plane, "topic": topic, "partition": partition, "next_offset": s.next_offset,
                "offset_kind": s.offset_kind, "end": s.end, "lag": s.lag(self._bus),
                # Kinesis: the reader's MillisBehindLatest (None on the file bus, or not read lately).
                "behind_ms": self._bus.behind_latest_ms(topic, partition),
                "watermark_ts_utc": format_ts_us(s.watermark_us) if s.watermark_us is not None else None,
                "last_commit_age_s": round(time.time() - s.committed_at, 3) if s.committed_at else None,
            })
        return {"partitions": partitions, "commits": self.commits,
                "last_commit_age_s": round(time.time() - self.last_commit_at, 3) if self.last_commit_at else None}



