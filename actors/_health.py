"""The health actor: GREEN / AMBER / RED with reasons, from the checkpoint actor and the kernel."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from runtime.exceptions import ActorUnavailable, AskTimeout
from runtime.kernel import Actor, ActorRef, Registry

__all__ = ("HealthActor",)


class HealthActor(Actor):
    def __init__(self, *, checkpoint: ActorRef, registry: Registry, store_available: Callable[[], bool]) -> None:
        self._checkpoint = checkpoint
        self._registry = registry
        self._store_available = store_available

    async def receive(self, message: object) -> object:
        if message == "report":
            return await self.report()
        return None

    async def report(self) -> dict[str, Any]:
        reasons: list[str] = []
        state = "GREEN"
        try:
            positions = await self._checkpoint.ask("positions", timeout=0.5)
        except (AskTimeout, ActorUnavailable):
            positions = {"partitions": []}
            reasons.append("CHECKPOINT_ACTOR_UNAVAILABLE")
            state = "AMBER"
        if not self._store_available():
            reasons.append("STORE_UNAVAILABLE")
            state = "RED"
        actors = [
            {"name": a.name, "state": a.state.value, "mailbox_depth": a.depth, "mailbox_capacity": a.capacity,
             "restarts": a.restarts}
            for a in self._registry.snapshot()
        ]
        return {"state": state, "reasons": reasons, "partitions": positions["partitions"], "actors": actors}  # type: ignore[index]
