"""Errors raised by the runtime. Everything derives from :class:`CtxplaneError`."""

from __future__ import annotations

from ctxplane.contracts.exceptions import ConfigError, CtxplaneError, UsageError

__all__ = (
    "ActorFailed",
    "ActorNameTaken",
    "ActorUnavailable",
    "AskTimeout",
    "BrokenMailbox",
    "BusClosed",
    "BusError",
    "BusPositionError",
    "ClosedMailbox",
    "ConfigError",
    "CtxplaneError",
    "IllegalTransition",
    "Interrupted",
    "MailboxFull",
    "StoreDataError",
    "StoreError",
    "StoreUnavailable",
    "SupervisorEscalation",
    "SupervisorStopped",
    "UsageError",
)


class ClosedMailbox(CtxplaneError):
    """Raised by a mailbox operation after *this side* closed the mailbox."""


class BrokenMailbox(CtxplaneError):
    """Raised when the peer is gone: the receiving actor stopped or crashed."""


class MailboxFull(CtxplaneError):
    """Raised by the non-waiting put when the mailbox is at capacity."""


class ActorUnavailable(BrokenMailbox):
    """The named actor is not running (not started yet, restarting, or stopped)."""


class ActorFailed(CtxplaneError):
    """An ``ask`` could not be answered because the actor crashed while handling it."""


class AskTimeout(CtxplaneError, TimeoutError):
    """An ``ask`` got no reply within its timeout."""


class IllegalTransition(CtxplaneError):
    """An actor lifecycle transition that the lifecycle table does not allow."""


class SupervisorEscalation(CtxplaneError):
    """A supervisor exceeded its restart intensity and gives up to its parent."""


class SupervisorStopped(CtxplaneError):
    """Raised by ``Supervisor.start_child``/``terminate_child`` when the supervisor is not running
    (not started yet, shutting down, or finished)."""


class ActorNameTaken(CtxplaneError, ValueError):
    """Raised when an actor or child is started under a name a live incarnation already uses."""


class StoreError(CtxplaneError):
    """A storage problem that is not about availability (schema, constraint, corruption)."""


class StoreUnavailable(StoreError):
    """The store cannot be reached right now; retrying later may succeed."""


class StoreDataError(StoreError):
    """The database refused a value the program wrote or looked up: an integer beyond its 64-bit
    column, text it cannot store, a violated constraint. Deterministic: the same program fails the
    same way on every retry, so the store-writer isolates the record instead of retrying
    (``actors/ingest/isolate.py``). Raised by both backends, never for connection problems."""


class Interrupted(CtxplaneError):
    """A command stopped early because the operator sent SIGINT or SIGTERM.

    Whatever it committed is whole (group commits are atomic), nothing after was started; the
    message says where it stopped. The CLI exits ``128 + signum`` (130 for SIGINT, 143 for
    SIGTERM), so a script can tell an interrupted ``replay`` or ``run --once`` from a full one.
    """

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class BusError(CtxplaneError):
    """An event-bus adapter refused an operation: a bad topic name, a malformed bus layout, a
    topic that exists with a different partition count, or an envelope without a partition key.
    Raised by ``ctxplane.runtime.bus``; retrying the same call will fail the same way."""


class BusPositionError(BusError, ValueError):
    """A read position is not valid for the bus's offset kind (e.g. ``"-1"`` or ``"abc"`` for a
    ``file_line`` bus). The message carries the position and the expected form."""


class BusClosed(BusError):
    """Raised by a bus operation after *this side* called ``aclose()`` on the adapter."""
