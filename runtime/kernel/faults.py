"""Fault-injection hooks for failure drills (quality.md §Reliability, "actor faults").

A drill crashes an actor by sending it :class:`InjectFault`; the actor raises :class:`InjectedFault`
from its own task, exactly where a real bug would surface, and its supervisor restarts it per
strategy (or escalates when the intensity is exceeded). Nothing else is faked: the crash loses the
actor's in-memory work like any crash does, and recovery is the real recovery path (the database
is the state).

Inert unless a drill turns it on: the only sender of :class:`InjectFault` is the drill controller
(``actors/drills/controller.py``), which exists only when the config says ``drills.enabled: true``, and acts
only on a ``drill`` request over a local socket (or one carrying the auth token). A receiving actor
pays one type check on a message it already dispatches by type; there is no flag on any hot path.
"""

from __future__ import annotations

from dataclasses import dataclass

from ctxplane.runtime.exceptions import CtxplaneError

__all__ = ("InjectFault", "InjectedFault")


@dataclass(frozen=True, slots=True)
class InjectFault:
    """Drill controller -> an actor: crash now (raise :class:`InjectedFault`).

    ``label`` names the drill request, so the crash in the log points at its cause.
    """

    label: str


class InjectedFault(CtxplaneError):
    """Raised by an actor that received :class:`InjectFault`: a deliberate crash for a drill.

    Not a bug and not a data problem; the supervisor treats it as any crash, which is the point.
    """
