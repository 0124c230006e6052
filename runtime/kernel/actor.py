"""Actors, the context they run in, references to them, and the name registry.

An *actor* is an object with a mailbox and one task that drains it. An *incarnation* is one run
of one actor instance: it owns a fresh mailbox and a fresh :class:`~ctxplane.runtime.kernel.lifecycle.Lifecycle`.
When a supervisor restarts an actor, a new instance runs in a new incarnation under the same name.

Senders never hold an incarnation. They hold an :class:`ActorRef` from :meth:`Registry.ref`, a
stable handle that looks the name up at call time, so a ref taken before a restart reaches the new
incarnation afterwards, and a ref to an actor that is not running fails fast with
:class:`ActorUnavailable` instead of queueing into a mailbox nobody reads.

No ask outlives its incarnation: every pending ask is registered with the incarnation it was sent
to, and when that incarnation ends, each unanswered one is failed (``ActorFailed`` if the actor
had taken it and then crashed, ``ActorUnavailable`` otherwise). Senders parked in ``tell`` on a
full mailbox are released with ``ActorUnavailable`` at the same moment.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import TYPE_CHECKING, Final, final

import anyio
from anyio.abc import TaskStatus

from ctxplane.runtime.exceptions import (
    ActorFailed,
    ActorNameTaken,
    ActorUnavailable,
    AskTimeout,
    BrokenMailbox,
    ClosedMailbox,
)
from ctxplane.runtime.kernel.faults import InjectedFault, InjectFault
from ctxplane.runtime.kernel.lifecycle import ActorState, Lifecycle, LifecycleEvent
from ctxplane.runtime.kernel.mailbox import (
    Mailbox,
    MailboxStatistics,
    NoPublicConstructor,
    open_mailbox,
)

if TYPE_CHECKING:
    from ctxplane.runtime.kernel.observer import KernelObserver

__all__ = ("Actor", "ActorContext", "ActorRef", "ActorSnapshot", "Registry", "Reply", "serve_actor")

# A STOPPING actor still accepts messages until it ends: a graceful stop finishes in-flight work,
# and that work may need replies (a partition actor waits for the acks of its in-flight batches).
_ACCEPTING: Final = frozenset({ActorState.STARTING, ActorState.RUNNING, ActorState.STOPPING})


@final
class _Stop:
    """The stop sentinel's type; there is exactly one instance, :data:`_STOP`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<stop sentinel>"


_STOP: Final = _Stop()


@final
class Reply(metaclass=NoPublicConstructor):
    """The answer slot of one ``ask``; an actor gets it from :meth:`ActorContext.unwrap`.

    The first of :meth:`send` / :meth:`fail` (or the kernel failing it when the incarnation ends)
    decides the outcome; later calls do nothing and return False. Answering after the asker gave
    up (timeout, cancellation) is harmless.
    """

    __slots__ = ("_actor", "_done", "_error", "_message", "_taken", "_value")

    def __init__(self, actor: str, message: object) -> None:
        self._actor = actor
        self._message = message
        self._done = anyio.Event()
        self._value: object = None
        self._error: BaseException | None = None
        self._taken = False  # the actor dequeued it (decides ActorFailed vs ActorUnavailable)

    @property
    def done(self) -> bool:
        """True once an answer (value or failure) was recorded."""
        return self._done.is_set()

    def send(self, value: object) -> bool:
        """Answer the ask with ``value``. Returns False if it was already answered."""
        if self._done.is_set():
            return False
        self._value = value
        self._done.set()
        return True

    def fail(self, cause: BaseException) -> bool:
        """Make the asker raise :class:`ActorFailed` (with ``cause`` as ``__cause__``).

        Returns False if the ask was already answered.
        """
        error = ActorFailed(
            f"actor {self._actor!r} failed while handling {type(self._message).__name__}: {cause!r}"
        )
        error.__cause__ = cause
        return self._abort(error)

    def _abort(self, error: BaseException) -> bool:
        if self._done.is_set():
            return False
        self._error = error
        self._done.set()
        return True


@final
class _Ask:
    """Envelope that carries an ask through the mailbox."""

    __slots__ = ("message", "reply")

    def __init__(self, message: object, reply: Reply) -> None:
        self.message = message
        self.reply = reply


class _Incarnation:
    """One run of one actor instance: its mailbox, lifecycle and unanswered asks.

    Invariant: ``accepting`` is True exactly while the lifecycle is STARTING, RUNNING or STOPPING; it is
    a cached copy so ``tell`` checks a bool instead of a set membership.
    """

    __slots__ = ("accepting", "lifecycle", "mailbox", "name", "outstanding", "stop_requested")

    def __init__(self, name: str, mailbox: Mailbox, lifecycle: Lifecycle) -> None:
        self.name = name
        self.mailbox = mailbox
        self.lifecycle = lifecycle
        self.accepting = True
        self.outstanding: set[Reply] = set()
        self.stop_requested = anyio.Event()

    def fire(self, event: LifecycleEvent) -> ActorState:
        state = self.lifecycle.fire(event)
        self.accepting = state in _ACCEPTING
        return state

    def request_stop(self) -> None:
        """Move to STOPPING and set ``stop_requested``; no-op once terminal."""
        if not self.lifecycle.terminal:
            self.fire(LifecycleEvent.STOP)
            self.stop_requested.set()

    async def send_stop(self) -> None:
        """Request a stop and queue the sentinel behind the messages already accepted.

        Waits while the mailbox is full (the caller bounds this with its shutdown timeout).
        """
        self.request_stop()
        # BrokenMailbox/ClosedMailbox: the incarnation already ended, there is nothing to stop.
        with contextlib.suppress(BrokenMailbox, ClosedMailbox):
            await self.mailbox.put(_STOP)

    def finish(self, event: LifecycleEvent, cause: BaseException | None) -> None:
        """End the incarnation: final state, release blocked senders, fail unanswered asks."""
        state = self.fire(event)
        self.stop_requested.set()
        self.mailbox.close_receiving()  # parked senders wake with BrokenMailbox now
        pending, self.outstanding = self.outstanding, set()
        for reply in pending:
            if cause is not None and reply._taken:
                reply.fail(cause)
            else:
                reply._abort(
                    ActorUnavailable(
                        f"actor {self.name!r} {state.value} before answering "
                        f"{type(reply._message).__name__}"
                    )
                )


class Actor:
    """Base class for actors. Subclass it and override :meth:`receive` (and maybe the hooks).

    One instance serves exactly one incarnation: a supervisor's factory builds a new one for each
    (re)start, so instance attributes are a cache that starts empty, never state that must
    survive a crash (the database is the state).
    """

    async def started(self, ctx: ActorContext) -> None:
        """Rehydrate before the first message (read checkpoints, warm caches). Default: no-op.

        Messages sent meanwhile queue in the mailbox. Raising here fails the start, which the
        supervisor treats like a crash (restart with backoff, counted toward intensity).
        """

    async def receive(self, message: object) -> object:
        """Handle one message; the return value is the reply when it was sent with ``ask``.

        Raising fails the actor (FAILED); an asker waiting on this message gets ActorFailed.
        """
        raise NotImplementedError(f"{type(self).__qualname__} must implement receive()")

    async def stopping(self) -> None:
        """Called after a graceful stop, once every message queued before it was handled.

        Not called after a crash or a cancellation. Default: no-op.
        """

    async def run(
        self, ctx: ActorContext, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """The receive loop. Override it only to interleave other work (e.g. reading a bus).

        An overriding loop must keep this contract:

        1. ``await self.started(ctx)``, then ``task_status.started()`` (the supervisor starts
           the next sibling only after that);
        2. for each ``message = await ctx.mailbox.get()``: stop when ``ctx.is_stop(message)``;
           otherwise ``payload, reply = ctx.unwrap(message)`` and, if ``reply`` is not None,
           answer it with ``reply.send(value)`` (or ``reply.fail(exc)``), now or later;
        3. a loop that does not sit in ``mailbox.get()`` checks ``ctx.stop_requested.is_set()``
           between units of work and drains the mailbox up to the sentinel before returning;
        4. return normally after a stop (after ``await self.stopping()``); raise to crash.

        Unanswered asks are failed by the kernel when the incarnation ends, so a crash never
        leaves an asker hanging.
        """
        await self.started(ctx)
        task_status.started()
        mailbox = ctx.mailbox
        while True:
            message = await mailbox.get()
            if message is _STOP:
                break
            if type(message) is InjectFault:
                raise InjectedFault(f"{ctx.name}: crashed on purpose by {message.label}")
            if type(message) is _Ask:
                reply = message.reply
                reply._taken = True
                try:
                    result = await self.receive(message.message)
                except Exception as exc:
                    reply.fail(exc)
                    raise  # the actor fails; its supervisor decides what happens next
                reply.send(result)
            else:
                await self.receive(message)
        await self.stopping()


@final
class ActorContext(metaclass=NoPublicConstructor):
    """What an incarnation gets from the kernel. Built by the kernel only.

    Attributes:
        name: the actor's registered name.
        mailbox: this incarnation's mailbox (read it with ``get``; the kernel closes it).
        self_ref: a ref to this actor's name (stays valid across restarts).
        registry: where to find other actors by name.
        stop_requested: set when a graceful stop was requested (and when the incarnation ends).
    """

    __slots__ = ("mailbox", "name", "registry", "self_ref", "stop_requested")

    def __init__(self, inc: _Incarnation, registry: Registry) -> None:
        self.name = inc.name
        self.mailbox = inc.mailbox
        self.registry = registry
        self.self_ref = registry.ref(inc.name)
        self.stop_requested = inc.stop_requested

    @staticmethod
    def is_stop(message: object) -> bool:
        """True if ``message`` is the stop sentinel: finish up and return from ``run``."""
        return message is _STOP

    def unwrap(self, message: object) -> tuple[object, Reply | None]:
        """Split a mailbox item into ``(payload, reply)``; ``reply`` is None for a ``tell``.

        Taking the reply marks the ask as being handled: if the actor crashes before answering,
        the asker gets ActorFailed rather than ActorUnavailable.

        Raises:
            InjectedFault: the item is an :class:`InjectFault` (a drill's deliberate crash).
        """
        if type(message) is InjectFault:
            raise InjectedFault(f"{self.name}: crashed on purpose by {message.label}")
        if type(message) is _Ask:
            message.reply._taken = True
            return message.message, message.reply
        return message, None


@dataclasses.dataclass(frozen=True, slots=True)
class ActorSnapshot:
    """One row of :meth:`Registry.snapshot`.

    Attributes:
        name: the actor's name.
        state: the current (or last) incarnation's state.
        depth: messages waiting in its mailbox (0 once the incarnation ended).
        capacity: its mailbox capacity.
        restarts: how many times a supervisor restarted it (any reason, including siblings').
    """

    name: str
    state: ActorState
    depth: int
    capacity: int
    restarts: int


class _Slot:
    """Registry entry for one name; outlives incarnations."""

    __slots__ = ("current", "name", "ref", "restarts")

    def __init__(self, name: str) -> None:
        self.name = name
        self.current: _Incarnation | None = None
        self.restarts = 0
        self.ref: ActorRef = ActorRef._create(self)


@final
class ActorRef(metaclass=NoPublicConstructor):
    """A stable handle to a name; resolves to the current incarnation at every call.

    Get one from :meth:`Registry.ref`; the registry hands out one ref per name, so refs compare
    by identity.
    """

    __slots__ = ("_slot",)

    def __init__(self, slot: _Slot) -> None:
        self._slot = slot

    def __repr__(self) -> str:
        return (
            f"<ActorRef {self._slot.name!r} {self.state.value if self.state else 'never started'}>"
        )

    @property
    def name(self) -> str:
        """The name this ref resolves."""
        return self._slot.name

    @property
    def state(self) -> ActorState | None:
        """The current incarnation's state; None if the name never started."""
        inc = self._slot.current
        return None if inc is None else inc.lifecycle.state

    def _live(self) -> _Incarnation:
        inc = self._slot.current
        if inc is None or not inc.accepting:
            raise self._unavailable(inc)
        return inc

    def _unavailable(self, inc: _Incarnation | None) -> ActorUnavailable:
        why = "has never started" if inc is None else f"is {inc.lifecycle.state.value}"
        return ActorUnavailable(
            f"actor {self._slot.name!r} {why}; retry after its supervisor restarts it"
        )

    async def tell(self, message: object) -> None:
        """Deliver ``message``, waiting while the mailbox is full (backpressure).

        Raises:
            ActorUnavailable: the actor is not STARTING/RUNNING, or its incarnation ended while
                we waited for room (the message was not delivered).
        """
        inc = self._live()
        mailbox = inc.mailbox
        try:
            # try_put is a plain call: the common case (room available) creates no coroutine.
            if not mailbox.try_put(message):
                await mailbox.put(message)
        except (BrokenMailbox, ClosedMailbox):
            raise self._unavailable(inc) from None

    def try_tell(self, message: object) -> bool:
        """Deliver ``message`` if there is room now. Returns False when the mailbox is full.

        Raises:
            ActorUnavailable: the actor is not STARTING/RUNNING.
        """
        inc = self._live()
        try:
            return inc.mailbox.try_put(message)
        except (BrokenMailbox, ClosedMailbox):
            raise self._unavailable(inc) from None

    async def ask(self, message: object, *, timeout: float) -> object:  # noqa: ASYNC109
        """Send ``message`` and wait for the actor's reply.

        Args:
            message: passed to the actor's ``receive`` (or its own loop via ``ctx.unwrap``).
            timeout: seconds for the whole exchange, including waiting for mailbox room.

        Returns:
            Whatever the actor answered.

        Raises:
            ValueError: ``timeout`` is not a positive number.
            AskTimeout: no answer within ``timeout``.
            ActorFailed: the actor crashed while handling this message.
            ActorUnavailable: the actor is not running, or stopped/crashed before taking it.
        """
        if not timeout > 0:  # also refuses NaN
            raise ValueError(f"ask to {self._slot.name!r}: timeout must be > 0, got {timeout!r}")
        inc = self._live()
        reply = Reply._create(self._slot.name, message)
        # Registered before the put, synchronously after the liveness check, so the
        # incarnation's finish() either sees it or happens before the check and refuses us.
        inc.outstanding.add(reply)
        try:
            # A bare CancelScope rather than fail_after(): same semantics, but it skips the
            # contextmanager wrapper, which was a third of the cost of an ask.
            with anyio.CancelScope(deadline=anyio.current_time() + timeout):
                await inc.mailbox.put(_Ask(message, reply))
                await reply._done.wait()
        except (BrokenMailbox, ClosedMailbox):
            raise self._unavailable(inc) from None
        finally:
            inc.outstanding.discard(reply)
        if not reply._done.is_set():  # only our deadline can get us here
            raise AskTimeout(
                f"actor {self._slot.name!r} did not answer {type(message).__name__} "
                f"within {timeout}s"
            )
        if reply._error is not None:
            raise reply._error
        return reply._value

    def statistics(self) -> MailboxStatistics:
        """The current (or last) incarnation's mailbox statistics.

        Raises:
            ActorUnavailable: the name never started.
        """
        inc = self._slot.current
        if inc is None:
            raise self._unavailable(None)
        return inc.mailbox.statistics()


@final
class Registry:
    """Names to actors. One per supervision tree; pass it down explicitly (no global).

    Names are flat and unique among live incarnations.
    """

    __slots__ = ("_slots",)

    def __init__(self) -> None:
        self._slots: dict[str, _Slot] = {}

    def ref(self, name: str) -> ActorRef:
        """Return the stable ref for ``name`` (the same object on every call).

        The name need not be started yet: the ref fails with ActorUnavailable until it is.
        """
        slot = self._slots.get(name)
        if slot is None:
            slot = self._slots[name] = _Slot(name)
        return slot.ref

    def snapshot(self) -> list[ActorSnapshot]:
        """One row per name that has started at least once, sorted by name."""
        rows = []
        for name in sorted(self._slots):
            slot = self._slots[name]
            inc = slot.current
            if inc is None:
                continue
            stats = inc.mailbox.statistics()
            rows.append(
                ActorSnapshot(name, inc.lifecycle.state, stats.depth, stats.capacity, slot.restarts)
            )
        return rows

    def _slot(self, name: str) -> _Slot:
        self.ref(name)
        return self._slots[name]


@final
class _StartSignal:
    """Wraps the caller's task_status: moves the incarnation to RUNNING, then forwards."""

    __slots__ = ("_inc", "_outer", "called")

    def __init__(self, inc: _Incarnation, outer: TaskStatus[None]) -> None:
        self._inc = inc
        self._outer = outer
        self.called = False

    def started(self, value: None = None) -> None:
        if self.called:
            raise RuntimeError(f"actor {self._inc.name!r}: task_status.started() called twice")
        self.called = True
        self._inc.fire(LifecycleEvent.STARTED)
        self._outer.started()


async def serve_actor(
    actor: Actor,
    *,
    name: str,
    registry: Registry,
    mailbox_capacity: int,
    observer: KernelObserver | None = None,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run one incarnation of ``actor`` under ``name`` until it stops. Supervisors call this.

    Signals ``task_status.started()`` once the actor's ``started`` hook returned. Whatever way
    ``run`` ends, the incarnation is finished: its state becomes STOPPED (returned, cancelled) or
    FAILED (raised), senders parked on its mailbox get ActorUnavailable and unanswered asks fail.

    Raises:
        ActorNameTaken: a live incarnation already uses ``name``.
        TypeError, ValueError: invalid ``mailbox_capacity``.
        BaseException: whatever ``actor.run`` raised (re-raised unchanged, cancellation too).
    """
    slot = registry._slot(name)
    if slot.current is not None and not slot.current.lifecycle.terminal:
        raise ActorNameTaken(
            f"actor name {name!r} is in use by a {slot.current.lifecycle.state.value} incarnation"
        )
    mailbox = open_mailbox(mailbox_capacity, name)
    inc = _Incarnation(name, mailbox, Lifecycle(name, observer.on_state if observer else None))
    slot.current = inc
    signal = _StartSignal(inc, task_status)
    try:
        await actor.run(ActorContext._create(inc, registry), task_status=signal)
    except BaseException as exc:
        if isinstance(exc, anyio.get_cancelled_exc_class()):
            inc.finish(LifecycleEvent.CANCELLED, None)
        else:
            inc.finish(LifecycleEvent.CRASHED, exc)
        raise
    if not signal.called:  # a run() that returned without signalling still counts as started
        signal.started()
    inc.finish(LifecycleEvent.EXITED, None)
