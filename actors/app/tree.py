"""The supervision tree of one ``ctxplane run`` process (docs/architecture.md §Supervision tree).

    root (rest_for_one)
    ├── store-writer        owns the write connection; group commits; acks; announces Committed
    ├── checkpoint          committed offsets, watermarks, lag per partition
    ├── query               owns the socket; supervises the query worker processes, relays Committed to them
    ├── partitions (one_for_one)
    │   ├── bus-watcher     wakes idle partition actors when their partition changes (file bus: inotify)
    │   ├── discovery       starts partition actors for partitions that appear later
    │   └── partition:<topic>:<n> × N
    ├── health              GREEN / AMBER / RED
    └── drills              drill controller, only with drills.enabled (actors/drills/controller.py)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import structlog

from ctxplane.actors.drills.controller import DRILLS, DrillGate, drill_controller_spec
from ctxplane.actors.ingest.bus_watch import BUS_WATCHER, BusWatcher
from ctxplane.actors.ingest.checkpoint import CheckpointActor
from ctxplane.actors.ingest.leases import ASSIGNER, assigner_spec, assignment_mode
from ctxplane.actors.ingest.partition import (
    PartitionActor,
    PartitionConfig,
    partition_name,
)
from ctxplane.actors.ingest.store_writer import StoreWriter, StoreWriterConfig
from ctxplane.actors.resources import AppContext
from ctxplane.actors.serve.health import HealthAckGate, HealthActor
from ctxplane.actors.serve.query import QueryActor
from ctxplane.contracts.classes import Plane
from ctxplane.contracts.health import CounterWindow
from ctxplane.contracts.intake import IntakeRules
from ctxplane.runtime.exceptions import ActorNameTaken, BusError, SupervisorStopped
from ctxplane.runtime.kernel import (
    Actor,
    ActorContext,
    Backoff,
    ChildSpec,
    Intensity,
    Strategy,
    Supervisor,
)
from ctxplane.runtime.store import StoreBackend, open_store

__all__ = ("AppContext", "build_root", "known_restarts", "partition_name")

log = structlog.get_logger("ctxplane.tree")

STORE_WRITER = "store-writer"
CHECKPOINT = "checkpoint"
QUERY = "query"
HEALTH = "health"


def _rules(app: AppContext, plane: Plane) -> IntakeRules:
    s = app.settings
    if plane is Plane.JOIN:
        return IntakeRules(Plane.JOIN, frozenset(s.join_plane.topics), required_run=s.run.platform_run_id)
    feature_plane = app.features
    return IntakeRules(
        Plane.FEATURES,
        frozenset(s.features.topics),
        required_run=s.run.platform_run_id,
        feature_key_types=feature_plane.key_types if feature_plane is not None else (),
        parse_amount=feature_plane.parse_amount if feature_plane is not None else None,
    )


def _partition_spec(
    app: AppContext, topic: str, partition: int, plane: str, writer: Callable[[], Any] | None = None
) -> ChildSpec:
    """``writer``: builds what the actor sends its batches to, per incarnation (leases: a
    LeasedWriter stamping the lease epoch); default the store-writer's ref."""
    s = app.settings
    lateness = s.join_plane.allowed_lateness_s if plane == "join" else s.features.allowed_lateness_s
    config = PartitionConfig(
        plane=Plane(plane), scope=app.scope, topic=topic, partition=partition,
        batch_max_records=s.ingest.batch_max_records, batch_max_bytes=s.ingest.batch_max_bytes,
        inflight_batches=s.ingest.inflight_batches, poll_interval_s=s.ingest.poll_interval_ms / 1000,
        allowed_lateness_us=int(lateness * 1_000_000), idle_poll_max_s=s.ingest.idle_poll_max_ms / 1000,
    )
    return ChildSpec(
        name=partition_name(topic, partition),
        factory=lambda: PartitionActor(
            config, bus=app.bus, store=app.read_store, rules=_rules(app, Plane(plane)),
            writer=writer() if writer is not None else app.registry.ref(STORE_WRITER), progress=app.progress,
        ),
        # Acks (at most inflight_batches) plus a stop sentinel and a few status asks.
        mailbox_capacity=s.ingest.inflight_batches + 8,
        shutdown_timeout=30.0,
    )


class DiscoveryActor(Actor):
    """Starts partition actors for topics/partitions that appear after start (e.g. a topic created later)."""

    def __init__(self, app: AppContext, supervisor: Callable[[], Supervisor], interval_s: float = 1.0) -> None:
        self._app = app
        self._supervisor = supervisor
        self._interval_s = interval_s

    async def run(self, ctx: ActorContext, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        topics = self._app.settings.topics()
        while not ctx.stop_requested.is_set():
            with anyio.move_on_after(self._interval_s):
                message = await ctx.mailbox.get()
                if ctx.is_stop(message):
                    break
            for topic, plane in topics.items():
                try:
                    found = await self._app.bus.list_partitions(topic)
                except (BusError, OSError) as exc:
                    log.warning("cannot list partitions", topic=topic, error=str(exc))
                    continue
                for partition in found:
                    if (topic, partition) in self._app.partitions:
                        continue
                    self._app.partitions[(topic, partition)] = plane
                    try:
                        await self._supervisor().start_child(_partition_spec(self._app, topic, partition, plane))
                    except (SupervisorStopped, ActorNameTaken):
                        return
                    log.info("new partition discovered", topic=topic, partition=partition)

    async def receive(self, message: object) -> object:  # pragma: no cover - run() handles the mailbox
        return None


def _partitions_supervisor(app: AppContext) -> Supervisor:
    holder: list[Supervisor] = []
    mode = assignment_mode(app.settings)
    watcher = ChildSpec(BUS_WATCHER, lambda: BusWatcher(bus=app.bus, topics=tuple(app.settings.topics()),
                                                        registry=app.registry), mailbox_capacity=4)
    if mode != "static":
        # Kinesis or leases: the assigner starts/stops partition actors (lineage gating, leases).
        children = [assigner_spec(
            mode=mode, app=app, supervisor=lambda: holder[0], writer=app.registry.ref(STORE_WRITER),
            spec_for=lambda topic, partition, plane, writer: _partition_spec(app, topic, partition, plane, writer),
        ), watcher]
    else:
        children = [watcher, ChildSpec(name="discovery", factory=lambda: DiscoveryActor(app, lambda: holder[0]), mailbox_capacity=4)]
        children += [_partition_spec(app, topic, partition, plane) for (topic, partition), plane in sorted(app.partitions.items())]
    sup = Supervisor(
        "partitions", children, strategy=Strategy.ONE_FOR_ONE, registry=app.registry,
        intensity=Intensity(max_restarts=10, period=10.0), observer=app.observer,
    )
    holder.append(sup)
    app.supervisors["partitions"] = sup
    return sup


def known_restarts(app: AppContext) -> tuple[list[tuple[str, str]], list[str]]:
    """The (supervisor, child) pairs whose restarts can be counted, and the supervisors that can
    escalate, as far as they are known at start-up (for metrics pre-created at zero)."""
    s = app.settings
    root = [STORE_WRITER, CHECKPOINT, QUERY, "partitions", HEALTH] + ([DRILLS] if s.drills.enabled else [])
    first = ASSIGNER if assignment_mode(s) != "static" else "discovery"
    children = [("root", name) for name in root]
    children += [("partitions", first), ("partitions", BUS_WATCHER)] + [("partitions", partition_name(t, p)) for t, p in sorted(app.partitions)]
    children += [(QUERY, f"query-worker-{n}") for n in range(s.query.workers)]
    return children, ["root", "partitions"]


def build_root(app: AppContext) -> Supervisor:
    s = app.settings
    registry = app.registry
    assignment_mode(s)  # refuse leases on SQLite before anything starts (UsageError)

    def open_writer_store() -> Awaitable[StoreBackend]:
        return open_store(s.store)

    def store_writer() -> StoreWriter:
        writer = StoreWriter(
            StoreWriterConfig(group_commit_max_records=s.ingest.group_commit_max_records),
            open_store=open_writer_store,
            subscribers=(registry.ref(CHECKPOINT), registry.ref(QUERY)),
            feature_plane=app.features,
            observer=app.observer,
            listeners=app.commit_listeners,
        )
        return writer

    def checkpoint() -> CheckpointActor:
        return CheckpointActor(store=app.read_store, bus=app.bus, scope=app.scope, partitions=dict(app.partitions))

    drill_gate = DrillGate.for_settings(s.drills.enabled, s.query, registry.ref(DRILLS))
    ack_gate = HealthAckGate(registry.ref(HEALTH), local_or_authenticated=drill_gate.local_or_authenticated)
    health_counters = CounterWindow()  # outlives restarts of the health actor

    def query() -> QueryActor:
        actor = QueryActor(
            s.query, store_settings=s.store, scope=app.scope, required_roles=tuple(s.join_plane.required_roles),
            checkpoint=registry.ref(CHECKPOINT), health=registry.ref(HEALTH), features=app.features,
            observer=app.observer, counts=app.query_counts, logging=s.logging,
        )
        actor.add_op("drill", drill_gate.handle)
        actor.add_op("health_ack", ack_gate.handle)
        return actor

    def health() -> HealthActor:
        assert app.health_policy is not None
        run_dir = s.health.artifact_root / (s.run.platform_run_id or "any-run")
        return HealthActor(
            policy=app.health_policy, checkpoint=registry.ref(CHECKPOINT), registry=registry, store=app.read_store,
            scope=app.scope, query_counts=app.query_counts, metrics=app.observer,
            artifact_path=run_dir / "reconciliation.json", artifact_interval_s=s.health.artifact_interval_s,
            counters=health_counters, acks_path=run_dir / "health_acks.jsonl",
        )

    children = [
        ChildSpec(STORE_WRITER, store_writer, mailbox_capacity=s.ingest.store_writer_mailbox, shutdown_timeout=30.0),
        ChildSpec(CHECKPOINT, checkpoint, mailbox_capacity=256),
        # The query endpoint starts before the partitions: after a restart it answers from the
        # store at once, while the partition actors are still starting and catching up.
        ChildSpec(QUERY, query, mailbox_capacity=256),
        ChildSpec("partitions", lambda: _partitions_supervisor(app), shutdown_timeout=60.0),
        ChildSpec(HEALTH, health, mailbox_capacity=64),
    ]
    if s.drills.enabled:  # last: it acts on everything before it (actors/drills/controller.py)
        children.append(drill_controller_spec(
            app, drill_gate, store_writer=registry.ref(STORE_WRITER),
            partition_spec=lambda topic, partition: _partition_spec(app, topic, partition, app.partitions[(topic, partition)]),
        ))
    root = Supervisor(
        "root", children, strategy=Strategy.REST_FOR_ONE, registry=registry,
        intensity=Intensity(max_restarts=5, period=30.0), backoff=Backoff(initial=0.1, maximum=5.0),
        observer=app.observer,
    )
    app.supervisors["root"] = root
    return root

