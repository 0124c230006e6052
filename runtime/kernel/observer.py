"""The kernel's observation hook: how metrics learn about states, restarts and escalations.

The kernel never logs and never imports a metrics library. Whoever wants to know (the Prometheus
module, a test) passes a :class:`KernelObserver` to each :class:`~ctxplane.runtime.kernel.Supervisor`
(a nested supervisor's factory passes the same observer on); the supervisor hands it to the actors
it starts, so their state changes are reported too.
"""

from __future__ import annotations

from typing import Protocol

from ctxplane.runtime.kernel.lifecycle import ActorState

__all__ = ("KernelObserver",)


class KernelObserver(Protocol):
    """Receives kernel events synchronously, on the event loop.

    Implementations must be cheap and must not raise: they run inside the supervisor's own task,
    and an exception there is a bug that propagates (it is never swallowed).
    """

    def on_state(self, actor: str, state: ActorState) -> None:
        """An actor (or supervisor) named ``actor`` entered ``state``."""

    def on_restart(
        self, supervisor: str, child: str, reason: BaseException | None, delay: float
    ) -> None:
        """``supervisor`` is about to restart ``child`` after ``delay`` seconds of backoff.

        ``reason`` is the exception the child raised, or None when the child exited normally
        (a PERMANENT child) or is restarted only because a sibling failed (ONE_FOR_ALL,
        REST_FOR_ONE).
        """

    def on_escalation(self, supervisor: str, reason: BaseException) -> None:
        """``supervisor`` exceeded its restart intensity; ``reason`` is the escalation error."""
