"""How a supervisor's children are specified: restart types, strategies, child specs (OTP's).

The supervisor that runs them is ``runtime/kernel/supervisor.py``; the restart and retry policy
(intensity, backoff) is ``runtime/kernel/restarts.py``.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    from ctxplane.runtime.kernel.actor import Actor
    from ctxplane.runtime.kernel.supervisor import Supervisor

__all__ = ("ChildFactory", "ChildSpec", "Restart", "Strategy")


class Restart(enum.Enum):
    """When a child is restarted (OTP restart types)."""

    PERMANENT = "permanent"  # always, even after a normal exit
    TRANSIENT = "transient"  # only after an abnormal exit (an exception)
    TEMPORARY = "temporary"  # never; the child is removed once it exits or is stopped


class Strategy(enum.Enum):
    """Which children restart when one fails (OTP strategies)."""

    ONE_FOR_ONE = "one_for_one"  # only the failed child
    ONE_FOR_ALL = "one_for_all"  # every child
    REST_FOR_ONE = "rest_for_one"  # the failed child and every child started after it


ChildFactory: TypeAlias = "Callable[[], Actor | Supervisor]"


@dataclasses.dataclass(frozen=True, slots=True)
class ChildSpec:
    """How to start and stop one child.

    Attributes:
        name: unique among the supervisor's children; an actor child registers under it.
        factory: returns a *new* Actor or Supervisor for each (re)start.
        mailbox_capacity: required for actors (bounded mailboxes only); ignored for supervisors.
        restart: when the child is restarted.
        shutdown_timeout: seconds a graceful stop may take before the child is cancelled.
    """

    name: str
    factory: ChildFactory
    mailbox_capacity: int | None = None
    restart: Restart = Restart.PERMANENT
    shutdown_timeout: float = 5.0

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("ChildSpec.name must be a non-empty string")
        if self.mailbox_capacity is not None and (
            isinstance(self.mailbox_capacity, bool)
            or not isinstance(self.mailbox_capacity, int)
            or self.mailbox_capacity < 1
        ):
            raise ValueError(
                f"child {self.name!r}: mailbox_capacity must be an int >= 1, "
                f"got {self.mailbox_capacity!r}"
            )
        if not self.shutdown_timeout > 0:
            raise ValueError(
                f"child {self.name!r}: shutdown_timeout must be > 0, got {self.shutdown_timeout!r}"
            )
