"""Kernel tests, plus the helpers they share.

Nothing here sleeps to synchronise: :class:`Recorder` wakes waiters on every kernel event, and
:class:`Gate` actors park on an :class:`anyio.Event` the test sets.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio

from ctxplane.runtime.kernel import (
    Actor,
    ActorContext,
    ActorState,
    Backoff,
    ChildSpec,
    Intensity,
    Registry,
    Strategy,
    Supervisor,
)

#: Restarts in tests happen after ~1 ms, not the production 50 ms.
FAST = Backoff(initial=0.001, maximum=0.002, jitter=0.0, reset_after=3600.0)
#: Generous budget so only tests about intensity escalate.
LENIENT = Intensity(max_restarts=100, period=60.0)
#: Hang guard for every wait; never reached when the kernel works.
GUARD = 5.0


class Boom(Exception):
    """The failure test actors raise on purpose."""


class Recorder:
    """A KernelObserver that keeps every event and wakes :meth:`wait_for` callers."""

    def __init__(self) -> None:
        self.states: list[tuple[str, ActorState]] = []
        self.restarts: list[tuple[str, str, BaseException | None, float]] = []
        self.escalations: list[tuple[str, BaseException]] = []
        self._changed = anyio.Event()

    def on_state(self, actor: str, state: ActorState) -> None:
        self.states.append((actor, state))
        self._poke()

    def on_restart(
        self, supervisor: str, child: str, reason: BaseException | None, delay: float
    ) -> None:
        self.restarts.append((supervisor, child, reason, delay))
        self._poke()

    def on_escalation(self, supervisor: str, reason: BaseException) -> None:
        self.escalations.append((supervisor, reason))
        self._poke()

    def count(self, actor: str, state: ActorState) -> int:
        return self.states.count((actor, state))

    def states_of(self, actor: str) -> list[ActorState]:
        return [s for a, s in self.states if a == actor]

    async def wait_for(self, predicate: Callable[[], bool], guard: float = GUARD) -> None:
        with anyio.fail_after(guard):
            while not predicate():
                await self._changed.wait()

    async def wait_running(self, actor: str, times: int = 1) -> None:
        await self.wait_for(lambda: self.count(actor, ActorState.RUNNING) >= times)

    def _poke(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()


def kit() -> tuple[Registry, Recorder, list[object]]:
    """A fresh registry, recorder and event log for one test."""
    return Registry(), Recorder(), []


class Probe(Actor):
    """Logs ``start:NAME`` / ``stop:NAME``; replies ``(name, id(self))``; ``"crash"`` raises."""

    def __init__(self, name: str, log: list[object]) -> None:
        self.name = name
        self.log = log

    async def started(self, ctx: ActorContext) -> None:
        self.log.append(f"start:{self.name}")

    async def receive(self, message: object) -> object:
        if message == "crash":
            raise Boom(self.name)
        return self.name, id(self)

    async def stopping(self) -> None:
        self.log.append(f"stop:{self.name}")


def probe(name: str, log: list[object], **kwargs: object) -> ChildSpec:
    """A ChildSpec for a :class:`Probe` with a small mailbox."""
    return ChildSpec(name, lambda: Probe(name, log), mailbox_capacity=8, **kwargs)  # type: ignore[arg-type]


def make_supervisor(
    children: list[ChildSpec],
    *,
    registry: Registry,
    recorder: Recorder,
    strategy: Strategy = Strategy.ONE_FOR_ONE,
    intensity: Intensity = LENIENT,
    backoff: Backoff = FAST,
    name: str = "root",
) -> Supervisor:
    return Supervisor(
        name,
        children,
        strategy=strategy,
        registry=registry,
        intensity=intensity,
        backoff=backoff,
        observer=recorder,
        rng=random.Random(7),
    )


@asynccontextmanager
async def running(sup: Supervisor) -> AsyncIterator[Supervisor]:
    """Run ``sup`` for the body, then stop it gracefully (guarded against hangs)."""
    async with anyio.create_task_group() as tg:
        await tg.start(sup.run)
        try:
            yield sup
        finally:
            with anyio.fail_after(GUARD):
                await sup.stop()
