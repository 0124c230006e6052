"""The process-scoped resources the application shares: the bus and store it opens, and their context.

Opened once by ``ctxplane run`` (or a replay, or a drill) from the settings, closed after it;
everything in the supervision tree reaches them through :class:`AppContext`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import anyio

from ctxplane.actors.ingest.progress import IngestProgress
from ctxplane.config.settings import Settings
from ctxplane.contracts.health import HealthPolicy
from ctxplane.runtime.bus import EventBus, FileBus
from ctxplane.runtime.kernel import Registry, Supervisor
from ctxplane.runtime.store import StoreBackend, open_store

__all__ = ("AppContext", "open_bus", "open_ready_store", "scope_of")


def scope_of(settings: Settings) -> str:
    """Checkpoint scope: the pinned run, or ``*`` when the process accepts any run."""
    return settings.run.platform_run_id or "*"


def open_bus(settings: Settings) -> EventBus:
    if settings.bus.kind == "file":
        return FileBus(settings.bus.root, start_position=settings.bus.start_position)
    from ctxplane.runtime.bus import kinesis_bus_from_settings

    return kinesis_bus_from_settings(settings.bus)


async def open_ready_store(settings: Settings) -> StoreBackend:
    store = await open_store(settings.store)
    try:
        await store.ensure_schema(auto_migrate=settings.store.auto_migrate)
    except BaseException:  # refused or cancelled: close what we opened (even when cancelled), re-raise
        with anyio.CancelScope(shield=True):
            await store.aclose()
        raise
    return store


@dataclass
class AppContext:
    """Process-scoped resources shared by the tree (built once by ``run``, closed after it)."""

    settings: Settings
    bus: EventBus
    read_store: StoreBackend
    registry: Registry
    progress: IngestProgress
    scope: str
    partitions: dict[tuple[str, int], str]  # (topic, partition) -> plane
    features: Any = None  # the feature plane (writer + query answerer), when enabled
    observer: Any = None  # metrics observer
    query_counts: Counter[str] = field(default_factory=Counter)  # join_misses, missing_features, ...
    health_policy: HealthPolicy | None = None
    supervisors: dict[str, Supervisor] = field(default_factory=dict)  # current root / partitions (drills)
