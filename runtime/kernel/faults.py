"""Fault injection, a kernel hook for failure drills: any actor crashes on :class:`InjectFault`.

The kernel raises :class:`InjectedFault` from the receiving actor's own task — in the default
receive loop and in ``ActorContext.unwrap`` that every custom loop calls — exactly where a real bug
would surface, and the actor's supervisor restarts it per strategy (or escalates when the intensity
is exceeded). Nothing else is faked: the crash loses the actor's in-memory work like any crash does,
and recovery is the real recovery path (the database is the state). No actor carries code for it.

Inert unless something sends :class:`InjectFault`: in ctxplane only the drill controller does,
which exists only when the config enables drills. The cost on every message is one type check.
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
