"""The bus watcher: one actor that wakes idle partition actors when their partition changes.

It reads the bus's change feed (inotify on the file bus, ``runtime/bus/changes.py``) and tells
:data:`~ctxplane.actors.ingest.wakeup.WAKE` to the partition actors it names; why, and what the
partition actor does with it, is in ``actors/ingest/wakeup.py``. A wake is only told to an actor
whose mailbox is empty: any message already waiting there makes it read again after handling it, so
at most one wake is ever queued and acks always find room. The feed is a hint: if this actor is down
(restarting), partition actors still find records by their back-off poll.
"""

from __future__ import annotations

import anyio
import structlog
from anyio.abc import TaskStatus

from ctxplane.actors.ingest.partition import partition_name
from ctxplane.actors.ingest.wakeup import WAKE
from ctxplane.runtime.bus import EventBus
from ctxplane.runtime.bus.changes import ChangeFeed
from ctxplane.runtime.exceptions import ActorUnavailable
from ctxplane.runtime.kernel import Actor, ActorContext, Registry

__all__ = ("BUS_WATCHER", "BusWatcher")

BUS_WATCHER = "bus-watcher"

log = structlog.get_logger("ctxplane.bus_watch")


class BusWatcher(Actor):
    """Reads ``bus.change_feed(topics)`` and wakes the partition actors it names (see the module
    docstring). Without a feed (Kinesis, no inotify) it only waits for its stop."""

    def __init__(self, *, bus: EventBus, topics: tuple[str, ...], registry: Registry) -> None:
        self._bus = bus
        self._topics = topics
        self._registry = registry

    async def run(self, ctx: ActorContext, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        feed = self._bus.change_feed(self._topics)
        try:
            log.info("idle partitions wake on", notification=feed.kind if feed is not None else "back-off poll only")
            task_status.started()
            async with anyio.create_task_group() as tg:
                if feed is not None:
                    tg.start_soon(self._follow, feed)
                while not ctx.is_stop(message := await ctx.mailbox.get()):
                    _payload, reply = ctx.unwrap(message)
                    if reply is not None:
                        reply.send({"notification": feed.kind if feed is not None else None})
                tg.cancel_scope.cancel()
        finally:
            if feed is not None:
                feed.close()
        await self.stopping()

    async def _follow(self, feed: ChangeFeed) -> None:
        while True:
            for topic, partition in await feed.wait():
                ref = self._registry.ref(partition_name(topic, partition))
                try:
                    if ref.statistics().depth == 0:
                        ref.try_tell(WAKE)
                except ActorUnavailable:
                    pass  # not started (yet), or restarting: it reads when it starts
