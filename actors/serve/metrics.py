"""Prometheus metrics of one process (names prefixed ``ctxplane_``; labels bounded).

One :class:`Metrics` object per process: it is the kernel observer (states, restarts, escalations),
the store-writer's commit observer, the query actor's latency observer, and — at scrape time — a
collector over the actor registry (mailbox depth and capacity). Labels are planes, topics,
partitions, reasons, ops, statuses and actor names: never event, flow or key ids.

Counters with labels are pre-created at zero for every label set known at start-up (each partition's
outcomes, each topic's ledger reasons; :meth:`Metrics.known_partitions`) and for partitions found
later as soon as they are seen: a series that first appeared with its first burst (at 482, say)
would never make ``increase()`` fire, since Prometheus has no earlier sample to compare with. The
same holds for restarts and escalations (:meth:`Metrics.known_restarts`: every supervisor and child
of the tree, the query workers ``query-worker-N`` included).

Besides its own metrics the registry carries the standard process (``process_*``: CPU, memory, file
descriptors) and Python (``python_info``, ``python_gc_*``) collectors and ``ctxplane_build_info``;
counters export no ``_created`` series.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ctxplane.contracts.reasons import INTAKE_ORDER, Reason
from ctxplane.runtime.kernel import ActorState, Registry

__all__ = ("Metrics",)

_COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_BATCH_BUCKETS = (1, 10, 50, 100, 500, 1000, 2000, 5000, 10000, 20000, 50000)
_QUERY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5)

# Intake outcomes per record (actors/ingest/apply.py), and the ledger reasons a running process can
# record per plane (REPLAY_PINS_MISMATCH is recorded by `ctxplane replay` only).
OUTCOMES = ("applied", "duplicate", "rejected", "ignored", "payload_hash_mismatch")
_COMMON_REASONS = tuple(r for r in INTAKE_ORDER if r not in (Reason.REPLAY_PINS_MISMATCH, Reason.JOIN_KEY_MISSING,
                                                            Reason.FLOW_ID_MISSING)) + (
    Reason.INTAKE_PAYLOAD_HASH_MISMATCH, Reason.STORE_REJECTED)
LEDGER_REASONS: dict[str, tuple[Reason, ...]] = {
    "join": (*_COMMON_REASONS, Reason.JOIN_KEY_MISSING, Reason.FLOW_ID_MISSING, Reason.FLOW_BINDING_CONFLICT,
             Reason.JOIN_FRAME_ROLE_CONFLICT, Reason.LATE_CONTEXT_EVENT),
    "features": (*_COMMON_REASONS, Reason.LATE_TRAFFIC_EVENT),
}


# /readyz turns 503 when the health actor's verdict is older than this (it refreshes every second).
READY_STALE_S = 30.0


def _kind(reason: str) -> str:
    return "annotation" if reason.startswith("LATE_") else "hard"


class _ActorCollector(Collector):
    def __init__(self, actors: Registry) -> None:
        self._actors = actors

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily("ctxplane_mailbox_depth", "Messages waiting in an actor's mailbox", labels=["actor"])
        capacity = GaugeMetricFamily("ctxplane_mailbox_capacity", "Capacity of an actor's mailbox", labels=["actor"])
        running = GaugeMetricFamily("ctxplane_actor_running", "1 when the actor is running", labels=["actor"])
        for row in self._actors.snapshot():
            depth.add_metric([row.name], row.depth)
            capacity.add_metric([row.name], row.capacity)
            running.add_metric([row.name], 1 if row.state is ActorState.RUNNING else 0)
        yield depth
        yield capacity
        yield running


class Metrics:
    def __init__(self, actors: Registry) -> None:
        # No ctxplane_*_created series: noise, and a cardinality doubling. (prometheus_client ships
        # py.typed but leaves this function unannotated.)
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry()
        r = self.registry
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            r.register(collector)
        self.build = Gauge("ctxplane_build_info", "Always 1: the version, policy revisions, store backend and bus",
                           ["version", "health_policy", "features_policy", "backend", "bus"], registry=r)
        self.events = Counter("ctxplane_events", "Records by intake outcome", ["plane", "topic", "partition", "outcome"], registry=r)
        self.failures = Counter("ctxplane_apply_failures", "Ledger rows by reason; kind=hard|annotation",
                                ["plane", "topic", "reason", "kind"], registry=r)
        self.commit_seconds = Histogram("ctxplane_commit_seconds", "Group-commit latency (begin to commit returned)",
                                        buckets=_COMMIT_BUCKETS, registry=r)
        self.commit_records = Histogram("ctxplane_commit_records", "Records per group commit", buckets=_BATCH_BUCKETS, registry=r)
        self.commits = Counter("ctxplane_commits", "Group commits", registry=r)
        self.restarts = Counter("ctxplane_actor_restarts", "Supervised restarts", ["supervisor", "child"], registry=r)
        self.escalations = Counter("ctxplane_supervisor_escalations", "Restart intensity exceeded", ["supervisor"], registry=r)
        self.query_seconds = Histogram("ctxplane_query_seconds", "Query latency by op and status", ["op", "status"],
                                       buckets=_QUERY_BUCKETS, registry=r)
        self.auth_failures = Counter("ctxplane_query_auth_failures", "Requests refused for a missing or wrong auth token "
                                     "(the connection is closed after the answer)", registry=r)
        self.store_available = Gauge("ctxplane_store_available", "1 when the store accepts writes", registry=r)
        self.store_available.set(1)
        self.store_is_available = True
        self.lag = Gauge("ctxplane_checkpoint_lag_records", "Records between the checkpoint and the bus end",
                         ["plane", "topic", "partition"], registry=r)
        self.watermark_age = Gauge("ctxplane_watermark_age_seconds", "Wall clock minus the partition watermark",
                                   ["plane", "topic", "partition"], registry=r)
        self.checkpoint_age = Gauge("ctxplane_checkpoint_age_seconds", "Seconds since the partition last committed",
                                    ["plane", "topic", "partition"], registry=r)
        self.behind = Gauge("ctxplane_kinesis_millis_behind_latest",
                            "MillisBehindLatest of the shard's last GetRecords (Kinesis only; absent while not read)",
                            ["plane", "topic", "partition"], registry=r)
        self._behind_labels: set[tuple[str, str, str]] = set()
        self.health = Gauge("ctxplane_health_state", "0 GREEN, 1 AMBER, 2 RED", registry=r)
        r.register(_ActorCollector(actors))
        self._known: set[tuple[str, str, int]] = set()  # (plane, topic, partition) with series at zero
        # The readiness verdict of the health actor's last refresh: (store ok, partitions assigned,
        # checked at (monotonic), checked at (UTC)); read by the HTTP thread (one tuple: no torn read).
        self._ready: tuple[bool, int, float, str] | None = None

    # -- probes -----------------------------------------------------------------------------------

    def on_readiness(self, *, store_available: bool, partitions_assigned: int, checked_at_utc: str) -> None:
        self._ready = (store_available, partitions_assigned, time.monotonic(), checked_at_utc)

    def readiness(self, now: float | None = None) -> tuple[bool, dict[str, Any]]:
        """``/readyz``: ready when the store is reachable and this process has partitions assigned,
        as of the health actor's last refresh (every second); not ready before the first one, or when
        none came for ``READY_STALE_S`` (the event loop is stuck)."""
        verdict = self._ready
        if verdict is None:
            return False, {"ready": False, "reasons": ["STARTING"]}
        store_ok, assigned, at, at_utc = verdict
        reasons = []
        if (time.monotonic() if now is None else now) - at > READY_STALE_S:
            reasons.append("HEALTH_NOT_REFRESHED")
        if not store_ok:
            reasons.append("STORE_UNAVAILABLE")
        if assigned == 0:
            reasons.append("NO_PARTITIONS_ASSIGNED")
        return not reasons, {"ready": not reasons, "reasons": reasons, "store_available": store_ok,
                             "partitions_assigned": assigned, "checked_at_utc": at_utc}

    def build_info(self, *, version: str, health_policy: str, features_policy: str, backend: str, bus: str) -> None:
        """Set ``ctxplane_build_info`` (one series, value 1); policies as ``policy_id@revision``."""
        self.build.clear()
        self.build.labels(version, health_policy, features_policy, backend, bus).set(1)

    # -- pre-created label sets -------------------------------------------------------------------

    def known_restarts(self, children: list[tuple[str, str]], supervisors: list[str]) -> None:
        """Create the restart series of these (supervisor, child) pairs and the escalation series of
        these supervisors at zero (``CtxplaneRestartStorm`` / ``CtxplaneEscalation`` use increase())."""
        for supervisor, child in children:
            self.restarts.labels(supervisor, child)
        for supervisor in supervisors:
            self.escalations.labels(supervisor)

    def known_partitions(self, partitions: dict[tuple[str, int], str]) -> None:
        """Create every outcome and ledger-reason series of these partitions ((topic, partition) ->
        plane) at zero, so that their first burst is an increase Prometheus can see."""
        for (topic, partition), plane in partitions.items():
            key = (plane, topic, partition)
            if key in self._known:
                continue
            self._known.add(key)
            for outcome in OUTCOMES:
                self.events.labels(plane, topic, str(partition), outcome)
            for reason in LEDGER_REASONS.get(plane, _COMMON_REASONS):
                self.failures.labels(plane, topic, reason.value, _kind(reason))

    # -- kernel observer ------------------------------------------------------------------------

    def on_state(self, actor: str, state: ActorState) -> None:
        pass  # states are read from the registry at scrape time

    def on_restart(self, supervisor: str, child: str, reason: BaseException | None, delay: float) -> None:
        self.restarts.labels(supervisor, child).inc()

    def on_escalation(self, supervisor: str, reason: BaseException) -> None:
        self.escalations.labels(supervisor).inc()

    # -- store-writer and query observers -------------------------------------------------------

    def on_commit(self, batches: Any, outcome: Any, seconds: float) -> None:
        self.commits.inc()
        self.commit_seconds.observe(seconds)
        self.commit_records.observe(sum(len(b.verdicts) for b in batches))
        plane_of = {(b.topic, b.partition): b.plane.value for b in batches}
        for (topic, partition, name), n in outcome.partition_counts.items():
            self.events.labels(plane_of.get((topic, partition), "?"), topic, str(partition), name).inc(n)
        for (plane, topic, _partition, reason), n in outcome.failures.items():
            self.failures.labels(plane, topic, reason, _kind(reason)).inc(n)

    def on_store_available(self, available: bool) -> None:
        self.store_is_available = available
        self.store_available.set(1 if available else 0)

    def on_query(self, op: str, status: str, seconds: float) -> None:
        self.query_seconds.labels(op, status).observe(seconds)

    def on_auth_failures(self, count: int) -> None:
        self.auth_failures.inc(count)

    # -- health actor -----------------------------------------------------------------------------

    def on_positions(self, partitions: list[dict[str, Any]]) -> None:
        now = time.time()
        self.known_partitions({(p["topic"], p["partition"]): p["plane"] for p in partitions
                               if (p["plane"], p["topic"], p["partition"]) not in self._known})
        for p in partitions:
            labels = (p["plane"], p["topic"], str(p["partition"]))
            if p.get("lag") is not None:
                self.lag.labels(*labels).set(p["lag"])
            if p.get("watermark_us") is not None:
                self.watermark_age.labels(*labels).set(now - p["watermark_us"] / 1e6)
            if p.get("last_commit_age_s") is not None:
                self.checkpoint_age.labels(*labels).set(p["last_commit_age_s"])
            if p.get("behind_ms") is not None:
                self.behind.labels(*labels).set(p["behind_ms"])
                self._behind_labels.add(labels)
            elif labels in self._behind_labels:  # not read lately (e.g. its lease moved): no stale value
                self.behind.remove(*labels)
                self._behind_labels.discard(labels)

    def on_health(self, state: str) -> None:
        self.health.set({"GREEN": 0, "AMBER": 1, "RED": 2}.get(state, 2))
