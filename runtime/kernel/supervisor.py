"""Supervisors: start children in order, restart them by strategy, give up when it is hopeless.

The vocabulary is OTP's (and Akka's): restart types PERMANENT / TRANSIENT / TEMPORARY, strategies
ONE_FOR_ONE / ONE_FOR_ALL / REST_FOR_ONE, a restart *intensity* (more than ``max_restarts`` restarts
within ``period`` seconds makes the supervisor stop all children and raise
:class:`SupervisorEscalation` to its parent), plus Akka-style exponential backoff with jitter
between a crash and the restart. This module is the running loop; the child specs (restart types,
strategies) are ``runtime/kernel/children.py``, the intensity and backoff ``runtime/kernel/restarts.py``.

Theory of operation
-------------------
Each child incarnation runs in its own task inside the supervisor's task group, wrapped in its own
cancel scope. The child task never lets an exception escape (that would cancel the siblings): it
records ``(child, run, outcome)`` in ``_exits`` and wakes the supervisor's task, which handles exits
one at a time under ``_lock``. Structural changes (restarts, ``start_child``, ``terminate_child``,
shutdown) all take that lock, so they never interleave. An exit whose ``run`` is no longer the
child's current run is stale (the child was already restarted or removed) and is ignored.

A failed start (factory or ``started()`` hook raised) is treated like a crash: it counts toward the
intensity and is retried after a backoff delay, so a store-writer whose database is down at boot
retries instead of aborting the tree - until the intensity says it is hopeless.

Shutdown (``stop()``, or escalation) stops children newest first. Each child gets its
``shutdown_timeout``: an actor receives the stop sentinel behind its queued messages, a nested
supervisor runs its own graceful shutdown; whatever overruns is cancelled. Cancelling ``run()``
instead cancels every child at once - structured concurrency, nothing outlives the task group.
"""

from __future__ import annotations

import dataclasses
import random
from collections import deque
from collections.abc import Sequence
from typing import final

import anyio
from anyio.abc import TaskGroup, TaskStatus

from ctxplane.runtime.exceptions import (
    ActorNameTaken,
    SupervisorEscalation,
    SupervisorStopped,
)
from ctxplane.runtime.kernel.actor import Actor, Registry, _Incarnation, serve_actor
from ctxplane.runtime.kernel.children import ChildSpec, Restart, Strategy
from ctxplane.runtime.kernel.lifecycle import ActorState, Lifecycle, LifecycleEvent
from ctxplane.runtime.kernel.observer import KernelObserver
from ctxplane.runtime.kernel.restarts import Backoff, Intensity, RestartWindow, Retry

__all__ = (
    "Supervisor",
    "SupervisorStatistics",
)


@dataclasses.dataclass(frozen=True, slots=True)
class SupervisorStatistics:
    """Counters of one supervisor.

    Attributes:
        name: the supervisor's name.
        restarts: restarts per current child name (crash, failed start or a sibling's failure).
        escalations: 1 if this supervisor gave up (raised SupervisorEscalation), else 0.
        running: names of the children running now, in start order.
    """

    name: str
    restarts: dict[str, int]
    escalations: int
    running: tuple[str, ...]


class _GiveUp(Exception):
    """Internal: unwinds the supervisor's own task to its shutdown path, then ``error`` is raised
    (outside the task group, so the caller gets it bare rather than in an ExceptionGroup)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(error)
        self.error = error


class _StartFailed(Exception):
    """Internal: a child's factory or start raised ``cause``."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(cause)
        self.cause = cause


class _Run:
    """One incarnation of a child (actor or supervisor)."""

    __slots__ = ("done", "expected", "incarnation", "instance", "scope", "started_at")

    def __init__(self, instance: Actor | Supervisor) -> None:
        self.instance = instance
        self.done = anyio.Event()
        self.expected = False  # we are stopping it: its exit is not a failure
        self.scope: anyio.CancelScope | None = None
        self.started_at = 0.0
        self.incarnation: _Incarnation | None = None


class _Child:
    """A child spec plus its supervision state. Invariant: ``run`` is None or not yet handled."""

    __slots__ = ("is_actor", "restarts", "retry", "run", "spec")

    def __init__(self, spec: ChildSpec, retry: Retry) -> None:
        self.spec = spec
        self.is_actor = spec.mailbox_capacity is not None  # confirmed by each start
        self.run: _Run | None = None
        self.retry = retry  # its backoff; reset after the child stayed up backoff.reset_after seconds
        self.restarts = 0


@final
class _ChildStarted:
    """task_status wrapper: records when and whether the child signalled started."""

    __slots__ = ("_outer", "_run", "called")

    def __init__(self, run: _Run, outer: TaskStatus[None]) -> None:
        self._run = run
        self._outer = outer
        self.called = False

    def started(self, value: None = None) -> None:
        self.called = True
        self._run.started_at = anyio.current_time()
        self._outer.started()


@final
class Supervisor:
    """Starts, watches and restarts children; a Supervisor can itself be a child.

    Args:
        name: for statistics, observer events and error messages.
        children: started in this order; names must be unique.
        strategy: which children restart when one fails.
        registry: where actor children register (shared by the whole tree).
        intensity: restart budget before escalating.
        backoff: delay policy between failure and restart.
        observer: receives states, restarts and escalations.
        rng: jitter source (pass a seeded one in tests).

    A Supervisor instance runs once; a parent's factory builds a new one per restart.
    """

    def __init__(
        self,
        name: str,
        children: Sequence[ChildSpec],
        *,
        strategy: Strategy,
        registry: Registry,
        intensity: Intensity = Intensity(),
        backoff: Backoff = Backoff(),
        observer: KernelObserver | None = None,
        rng: random.Random | None = None,
    ) -> None:
        names = [c.name for c in children]
        if len(set(names)) != len(names):
            raise ActorNameTaken(f"supervisor {name!r}: duplicate child names in {names}")
        self.name = name
        self.strategy = strategy
        self.registry = registry
        self.intensity = intensity
        self.backoff = backoff
        self.observer = observer
        self._rng = rng if rng is not None else random.Random()
        self._children = [self._child(spec) for spec in children]
        self._restarts = RestartWindow(intensity)
        # Invariant: at most one pending exit per child run, so this stays bounded by the
        # number of children.
        self._exits: deque[tuple[_Child, _Run, BaseException | None]] = deque()
        self._lock = anyio.Lock(fast_acquire=True)
        self._lifecycle: Lifecycle | None = None
        self._tg: TaskGroup | None = None
        self._stop_flag = False
        self._stop_event = anyio.Event()  # set with _stop_flag; interrupts backoff sleeps
        self._wake = anyio.Event()  # replaced after each wake-up (anyio events never clear)
        self._finished = anyio.Event()
        self._escalations = 0

    # -- public API ---------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Start the children in order, signal ``task_status``, supervise until stopped.

        Returns after :meth:`stop` completed the graceful shutdown.

        Raises:
            SupervisorEscalation: restart intensity exceeded (also during the initial start,
                before ``task_status.started()``); every child was stopped first.
            TypeError, ValueError: a child factory returned something unusable (a bug: it is
                not retried); every child was stopped first.
            RuntimeError: this instance already ran.
        """
        if self._lifecycle is not None:
            raise RuntimeError(
                f"supervisor {self.name!r} already ran; a ChildSpec factory must return a new one"
            )
        self._lifecycle = Lifecycle(self.name, self.observer.on_state if self.observer else None)
        failure: Exception | None = None
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                try:
                    async with self._lock:
                        for child in list(self._children):
                            if self._stop_flag:
                                break
                            await self._start(child)
                    self._lifecycle.fire(LifecycleEvent.STARTED)
                    task_status.started()
                    await self._supervise()
                except _GiveUp as give_up:
                    failure = give_up.error
                self._lifecycle.fire(LifecycleEvent.STOP)
                async with self._lock:
                    self._tg = None  # refuse start_child from now on
                    for child in reversed(self._children):
                        await self._stop_child(child)
        except BaseException as exc:
            cancelled = isinstance(exc, anyio.get_cancelled_exc_class())
            self._lifecycle.fire(LifecycleEvent.CANCELLED if cancelled else LifecycleEvent.CRASHED)
            raise
        finally:
            self._tg = None
            self._finished.set()
        if failure is not None:
            self._lifecycle.fire(LifecycleEvent.CRASHED)
            raise failure
        self._lifecycle.fire(LifecycleEvent.EXITED)

    async def stop(self) -> None:
        """Gracefully stop every child (newest first) and wait until :meth:`run` returned.

        Idempotent; returns at once if ``run`` never started or already finished.
        """
        self._stop_flag = True
        self._stop_event.set()
        self._wake.set()
        if self._lifecycle is not None:
            await self._finished.wait()

    async def start_child(self, spec: ChildSpec) -> None:
        """Add ``spec`` as the newest child and start it (one attempt, no retry).

        Raises:
            SupervisorStopped: the supervisor is not running.
            ActorNameTaken: a child with that name exists.
            Exception: whatever the child's factory or start raised; it is not added.
        """
        async with self._lock:
            if self._tg is None or self._stop_flag:
                raise SupervisorStopped(f"supervisor {self.name!r} is not running")
            if any(c.spec.name == spec.name for c in self._children):
                raise ActorNameTaken(f"supervisor {self.name!r} already has a child {spec.name!r}")
            child = self._child(spec)
            try:
                await self._start_once(child)
            except _StartFailed as failure:
                raise failure.cause from None
            except _GiveUp as give_up:
                raise give_up.error from None
            self._children.append(child)

    async def terminate_child(self, name: str) -> None:
        """Gracefully stop child ``name`` (within its shutdown_timeout) and remove it.

        Must not be called by that child itself (it would wait for its own exit).

        Raises:
            SupervisorStopped: the supervisor is not running.
            KeyError: no child has that name.
        """
        async with self._lock:
            if self._tg is None:
                raise SupervisorStopped(f"supervisor {self.name!r} is not running")
            for child in self._children:
                if child.spec.name == name:
                    await self._stop_child(child)
                    self._children.remove(child)
                    return
            raise KeyError(f"supervisor {self.name!r} has no child {name!r}")

    @property
    def state(self) -> ActorState | None:
        """The supervisor's own lifecycle state; None before ``run``."""
        return None if self._lifecycle is None else self._lifecycle.state

    def statistics(self) -> SupervisorStatistics:
        """Restart counts per child, escalations, and which children run now."""
        return SupervisorStatistics(
            name=self.name,
            restarts={c.spec.name: c.restarts for c in self._children},
            escalations=self._escalations,
            running=tuple(c.spec.name for c in self._children if c.run is not None),
        )

    # -- supervision --------------------------------------------------------------------------

    async def _supervise(self) -> None:
        while not self._stop_flag:
            if self._exits:
                child, run, outcome = self._exits.popleft()
                async with self._lock:
                    if child.run is run and child in self._children:  # else stale
                        await self._handle_exit(child, outcome)
                continue
            await self._wake.wait()
            self._wake = anyio.Event()

    async def _handle_exit(self, child: _Child, outcome: BaseException | None) -> None:
        """Apply the restart type and strategy to one child's unexpected exit."""
        assert child.run is not None
        up_for = anyio.current_time() - child.run.started_at
        child.run = None
        restart = child.spec.restart
        if restart is Restart.TEMPORARY or (restart is Restart.TRANSIENT and outcome is None):
            if restart is Restart.TEMPORARY:
                self._children.remove(child)
            return
        index = self._children.index(child)
        if self.strategy is Strategy.ONE_FOR_ONE:
            group = [child]
        elif self.strategy is Strategy.ONE_FOR_ALL:
            group = list(self._children)
        else:
            group = self._children[index:]
        # Step 1: charge the restart to the intensity budget (may escalate).
        self._charge(child, outcome)
        # Step 2: stop the siblings that go down with it, newest first.
        for sibling in reversed(group):
            await self._stop_child(sibling)
        # Step 3: temporary siblings are never restarted, not even collaterally (OTP).
        for sibling in group:
            if sibling is not child and sibling.spec.restart is Restart.TEMPORARY:
                self._children.remove(sibling)
        group = [c for c in group if c in self._children]
        # Step 4: back off, then start the group again in start order.
        delay = child.retry.failed(up_for=up_for)
        for member in group:
            self._count_restart(member, outcome if member is child else None, delay)
        if await self._sleep_unless_stopped(delay):
            return
        for member in group:
            if self._stop_flag:
                return
            await self._start(member)

    async def _start(self, child: _Child) -> None:
        """Start ``child``, retrying failed starts with backoff; a failed start is a crash.

        Raises:
            _GiveUp: the intensity was exceeded.
        """
        while True:
            try:
                await self._start_once(child)
                return
            except _StartFailed as failure:
                if child.spec.restart is Restart.TEMPORARY:
                    self._children.remove(child)
                    return
                self._charge(child, failure.cause)
                delay = child.retry.failed()
                self._count_restart(child, failure.cause, delay)
                if await self._sleep_unless_stopped(delay):
                    return

    async def _start_once(self, child: _Child) -> None:
        """One start attempt. Returns when the child signalled started.

        Raises:
            _StartFailed: the factory or the child's start raised.
            _GiveUp: the factory returned something unusable (a bug: retrying cannot help).
        """
        assert self._tg is not None
        spec = child.spec
        try:
            instance = spec.factory()
        except Exception as exc:
            raise _StartFailed(exc) from exc
        child.is_actor = isinstance(instance, Actor)
        if child.is_actor and spec.mailbox_capacity is None:
            raise _GiveUp(
                ValueError(
                    f"child {spec.name!r} is an actor: ChildSpec.mailbox_capacity is required"
                )
            )
        if not child.is_actor and not isinstance(instance, Supervisor):
            raise _GiveUp(
                TypeError(
                    f"child {spec.name!r}: factory returned {type(instance).__name__}, "
                    "expected an Actor or a Supervisor"
                )
            )
        run = _Run(instance)
        child.run = run  # before start: an exit right after started() must not look stale
        try:
            await self._tg.start(self._child_main, child, run)
        except Exception as exc:
            child.run = None
            raise _StartFailed(exc) from exc
        if isinstance(instance, Actor):
            run.incarnation = self.registry._slot(spec.name).current

    async def _child_main(self, child: _Child, run: _Run, *, task_status: TaskStatus[None]) -> None:
        """The task of one child run. Exceptions after start become exit reports, never escape."""
        signal = _ChildStarted(run, task_status)
        outcome: BaseException | None = None
        try:
            with anyio.CancelScope() as scope:
                run.scope = scope
                try:
                    if isinstance(run.instance, Supervisor):
                        await run.instance.run(task_status=signal)
                    else:
                        assert child.spec.mailbox_capacity is not None
                        await serve_actor(
                            run.instance,
                            name=child.spec.name,
                            registry=self.registry,
                            mailbox_capacity=child.spec.mailbox_capacity,
                            observer=self.observer,
                            task_status=signal,
                        )
                except Exception as exc:
                    if not signal.called:
                        raise  # a failed start: tg.start() re-raises it in _start_once
                    outcome = exc  # reported below; raising would cancel the siblings
        finally:
            run.done.set()  # even on cancellation or KeyboardInterrupt: _stop_child waits on it
        if not run.expected and signal.called:
            self._exits.append((child, run, outcome))
            self._wake.set()

    async def _stop_child(self, child: _Child) -> None:
        """Gracefully stop ``child`` if it runs; cancel it if it overruns its shutdown_timeout."""
        run = child.run
        if run is None:
            return
        run.expected = True
        with anyio.move_on_after(child.spec.shutdown_timeout):
            if isinstance(run.instance, Supervisor):
                await run.instance.stop()
            elif run.incarnation is not None:
                await run.incarnation.send_stop()
            await run.done.wait()
        if not run.done.is_set():
            assert run.scope is not None
            run.scope.cancel()
            await run.done.wait()
        child.run = None

    # -- bookkeeping --------------------------------------------------------------------------

    def _child(self, spec: ChildSpec) -> _Child:
        return _Child(spec, Retry(self.backoff, rng=self._rng))

    def _charge(self, child: _Child, reason: BaseException | None) -> None:
        """Record one restart in the intensity window; escalate when it overflows.

        Raises:
            _GiveUp: more than ``max_restarts`` restarts within ``period`` seconds.
        """
        if self._restarts.charge(anyio.current_time()):
            error = SupervisorEscalation(
                f"supervisor {self.name!r} gave up: {len(self._restarts)} restarts within "
                f"{self.intensity.period}s exceed max_restarts={self.intensity.max_restarts}; "
                f"last failure in child {child.spec.name!r}: {reason!r}"
            )
            error.__cause__ = reason
            self._escalations += 1
            if self.observer is not None:
                self.observer.on_escalation(self.name, error)
            raise _GiveUp(error)

    def _count_restart(self, child: _Child, reason: BaseException | None, delay: float) -> None:
        child.restarts += 1
        if child.is_actor:
            self.registry._slot(child.spec.name).restarts += 1
        if self.observer is not None:
            self.observer.on_restart(self.name, child.spec.name, reason, delay)

    async def _sleep_unless_stopped(self, delay: float) -> bool:
        """Sleep ``delay`` seconds; return True early if a stop was requested meanwhile."""
        with anyio.move_on_after(delay):
            await self._stop_event.wait()
        return self._stop_flag
