"""The actor kernel: bounded mailboxes, actors, refs, a registry and supervisors.

Generic on purpose: nothing here knows about joins, features, buses or stores. The application in
``actors/`` builds its supervision tree from these pieces.
"""

from __future__ import annotations

from ._actor import Actor as Actor
from ._actor import ActorContext as ActorContext
from ._actor import ActorRef as ActorRef
from ._actor import ActorSnapshot as ActorSnapshot
from ._actor import Registry as Registry
from ._actor import Reply as Reply
from ._lifecycle import ActorState as ActorState
from ._mailbox import Mailbox as Mailbox
from ._mailbox import MailboxStatistics as MailboxStatistics
from ._mailbox import open_mailbox as open_mailbox
from ._observer import KernelObserver as KernelObserver
from ._supervisor import Backoff as Backoff
from ._supervisor import ChildSpec as ChildSpec
from ._supervisor import Intensity as Intensity
from ._supervisor import Restart as Restart
from ._supervisor import Strategy as Strategy
from ._supervisor import Supervisor as Supervisor
from ._supervisor import SupervisorStatistics as SupervisorStatistics

__all__ = (
    "Actor",
    "ActorContext",
    "ActorRef",
    "ActorSnapshot",
    "ActorState",
    "Backoff",
    "ChildSpec",
    "Intensity",
    "KernelObserver",
    "Mailbox",
    "MailboxStatistics",
    "Registry",
    "Reply",
    "Restart",
    "Strategy",
    "Supervisor",
    "SupervisorStatistics",
    "open_mailbox",
)
