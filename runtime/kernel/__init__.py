"""The actor kernel: bounded mailboxes, actors, refs, a registry and supervisors.

Generic on purpose: nothing here knows about joins, features, buses or stores. The application in
``actors/`` builds its supervision tree from these pieces.
"""

from __future__ import annotations

from ctxplane.runtime.kernel.actor import Actor as Actor
from ctxplane.runtime.kernel.actor import ActorContext as ActorContext
from ctxplane.runtime.kernel.actor import ActorRef as ActorRef
from ctxplane.runtime.kernel.actor import ActorSnapshot as ActorSnapshot
from ctxplane.runtime.kernel.actor import Registry as Registry
from ctxplane.runtime.kernel.actor import Reply as Reply
from ctxplane.runtime.kernel.children import ChildSpec as ChildSpec
from ctxplane.runtime.kernel.children import Restart as Restart
from ctxplane.runtime.kernel.children import Strategy as Strategy
from ctxplane.runtime.kernel.faults import InjectedFault as InjectedFault
from ctxplane.runtime.kernel.faults import InjectFault as InjectFault
from ctxplane.runtime.kernel.lifecycle import ActorState as ActorState
from ctxplane.runtime.kernel.mailbox import Mailbox as Mailbox
from ctxplane.runtime.kernel.mailbox import MailboxStatistics as MailboxStatistics
from ctxplane.runtime.kernel.mailbox import open_mailbox as open_mailbox
from ctxplane.runtime.kernel.observer import KernelObserver as KernelObserver
from ctxplane.runtime.kernel.restarts import Backoff as Backoff
from ctxplane.runtime.kernel.restarts import Intensity as Intensity
from ctxplane.runtime.kernel.restarts import RestartWindow as RestartWindow
from ctxplane.runtime.kernel.restarts import Retry as Retry
from ctxplane.runtime.kernel.supervisor import Supervisor as Supervisor
from ctxplane.runtime.kernel.supervisor import (
    SupervisorStatistics as SupervisorStatistics,
)

__all__ = (
    "Actor",
    "ActorContext",
    "ActorRef",
    "ActorSnapshot",
    "ActorState",
    "Backoff",
    "ChildSpec",
    "InjectFault",
    "InjectedFault",
    "Intensity",
    "KernelObserver",
    "Mailbox",
    "MailboxStatistics",
    "Registry",
    "Reply",
    "Restart",
    "RestartWindow",
    "Retry",
    "Strategy",
    "Supervisor",
    "SupervisorStatistics",
    "open_mailbox",
)
