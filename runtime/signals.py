"""Stopping on SIGINT/SIGTERM: the signal becomes an event the work polls at its commit points.

Python's default SIGINT handling raises ``KeyboardInterrupt`` wherever the main thread happens to
be, and asyncio's runner turns it into a *native* cancellation of the main task, which anyio's
shielded waits cannot hold back: a ``to_thread`` wait is abandoned while the worker thread still
runs a SQLite transaction, and the clean-up that follows closes that connection under it (a
segfault, exit 139). :func:`stop_on_signals` instead installs handlers through the event loop for
the whole lifetime of the work (set-up and clean-up included), so a signal only sets
:attr:`StopRequest.event`; the work decides where to stop (after the current group commit) and
everything is closed in order.
"""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import anyio
from anyio.abc import TaskStatus

__all__ = ("StopRequest", "stop_on_signals")

T = TypeVar("T")

#: The signals that ask a command to stop.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass(slots=True)
class StopRequest:
    """Set once, by the first SIGINT/SIGTERM (later ones change nothing).

    Invariant: ``signum`` is ``None`` exactly while ``event`` is not set.
    """

    event: anyio.Event = field(default_factory=anyio.Event)
    signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.event.is_set()

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else "-"

    def set(self, signum: int) -> None:
        if self.signum is None:
            self.signum = signum
            self.event.set()


async def _watch(stop: StopRequest, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
    with anyio.open_signal_receiver(*STOP_SIGNALS) as signals:
        task_status.started()
        async for signum in signals:
            stop.set(signum)


async def stop_on_signals(work: Callable[[StopRequest], Awaitable[T]]) -> T:
    """Run ``work(stop)`` with SIGINT/SIGTERM turned into ``stop`` for its whole duration.

    The handlers are installed before ``work`` starts and removed after it returned or raised
    (main thread only, as for any signal handler).
    """
    stop = StopRequest()
    async with anyio.create_task_group() as tg:
        await tg.start(_watch, stop)
        try:
            result = await work(stop)
        finally:
            tg.cancel_scope.cancel()
    return result
