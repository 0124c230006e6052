"""Actor lifecycle: every state an actor incarnation can be in, and every legal move.

Theory of operation
-------------------
Everything that decides a lifecycle transition lives in this file, and this file knows nothing
about mailboxes, tasks or supervisors (the same split as ``h11/_state.py``). The kernel reports
*events* ("the started hook returned", "run() raised", ...) and the table below says which state
follows. A move that the table does not list is a kernel bug, so it raises
:class:`IllegalTransition` naming the actor, the state it was in and the event that was refused.

One :class:`Lifecycle` belongs to one incarnation. ``STOPPED`` and ``FAILED`` are terminal: a
restart creates a new incarnation with a new ``Lifecycle``; a failed object is never reused.

::

    STARTING --started--> RUNNING --stop--> STOPPING --exited/cancelled--> STOPPED
        |                    |                  |
        +-----crashed--------+------crashed-----+-----------------------> FAILED

Cancellation ends in ``STOPPED``, not ``FAILED``: being cancelled is not an error.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Final, TypeAlias, final

from ctxplane.runtime.exceptions import IllegalTransition

__all__ = ("TRANSITIONS", "ActorState", "Lifecycle", "LifecycleEvent", "StateCallback")


class ActorState(enum.Enum):
    """Where one actor (or supervisor) incarnation is in its life."""

    #: Created; the ``started()`` hook (rehydration) is running. Messages are already accepted and
    #: queue up until the receive loop begins.
    STARTING = "starting"
    #: ``started()`` returned and ``task_status.started()`` was signalled; the loop is serving.
    RUNNING = "running"
    #: A graceful stop was requested: the stop sentinel is queued behind the messages already
    #: accepted. New messages are refused.
    STOPPING = "stopping"
    #: ``run()`` returned or was cancelled. Terminal.
    STOPPED = "stopped"
    #: ``run()`` raised. Terminal; the supervisor decides whether a new incarnation starts.
    FAILED = "failed"


class LifecycleEvent(enum.Enum):
    """What the kernel observed about an incarnation."""

    STARTED = "started"  # the started() hook returned and task_status.started() was called
    STOP = "stop"  # a graceful stop was requested
    EXITED = "exited"  # run() returned normally
    CANCELLED = "cancelled"  # run() was cancelled (shutdown overrun, or the whole tree cancelled)
    CRASHED = "crashed"  # run() raised an exception


_S = ActorState
_E = LifecycleEvent

#: The complete transition table: (state, event) -> next state. Anything absent is illegal.
TRANSITIONS: Final[dict[tuple[ActorState, LifecycleEvent], ActorState]] = {
    (_S.STARTING, _E.STARTED): _S.RUNNING,
    (_S.STARTING, _E.STOP): _S.STOPPING,
    (_S.STARTING, _E.EXITED): _S.STOPPED,
    (_S.STARTING, _E.CANCELLED): _S.STOPPED,
    (_S.STARTING, _E.CRASHED): _S.FAILED,
    (_S.RUNNING, _E.STOP): _S.STOPPING,
    (_S.RUNNING, _E.EXITED): _S.STOPPED,
    (_S.RUNNING, _E.CANCELLED): _S.STOPPED,
    (_S.RUNNING, _E.CRASHED): _S.FAILED,
    # A stop requested while the started() hook was still running: when the hook then returns,
    # the actor stays STOPPING (it will find the sentinel first thing in its mailbox).
    (_S.STOPPING, _E.STARTED): _S.STOPPING,
    # Asking twice to stop is harmless (a supervisor shutdown racing a terminate_child).
    (_S.STOPPING, _E.STOP): _S.STOPPING,
    (_S.STOPPING, _E.EXITED): _S.STOPPED,
    (_S.STOPPING, _E.CANCELLED): _S.STOPPED,
    (_S.STOPPING, _E.CRASHED): _S.FAILED,
}

TERMINAL: Final[frozenset[ActorState]] = frozenset({_S.STOPPED, _S.FAILED})

#: Called after every transition (and once for the initial STARTING) with (actor name, new state).
StateCallback: TypeAlias = Callable[[str, ActorState], None]


@final
class Lifecycle:
    """The state of one incarnation, moved only through :data:`TRANSITIONS`.

    Args:
        name: the actor's name, used in error messages and passed to ``on_change``.
        on_change: called with ``(name, state)`` for the initial ``STARTING`` and after each
            transition. It must not raise (an observer that raises is a bug and propagates).

    Invariant: ``state`` only ever changes through :meth:`fire`.
    """

    __slots__ = ("_on_change", "name", "state")

    def __init__(self, name: str, on_change: StateCallback | None = None) -> None:
        self.name = name
        self.state = ActorState.STARTING
        self._on_change = on_change
        if on_change is not None:
            on_change(name, self.state)

    @property
    def terminal(self) -> bool:
        """True once the incarnation is ``STOPPED`` or ``FAILED`` (nothing can follow)."""
        return self.state in TERMINAL

    def fire(self, event: LifecycleEvent) -> ActorState:
        """Apply ``event`` and return the new state.

        Raises:
            IllegalTransition: ``(state, event)`` is not in :data:`TRANSITIONS`; the state is
                left unchanged.
        """
        try:
            new = TRANSITIONS[self.state, event]
        except KeyError:
            allowed = ", ".join(sorted(e.value for (s, e) in TRANSITIONS if s is self.state))
            raise IllegalTransition(
                f"actor {self.name!r}: event {event.value!r} is not allowed in state "
                f"{self.state.value!r} (allowed: {allowed or 'none, the state is terminal'})"
            ) from None
        changed = new is not self.state
        self.state = new
        if changed and self._on_change is not None:
            self._on_change(self.name, new)
        return new
