"""The health actor: GREEN / AMBER / RED with reasons, Prometheus gauges, the reconciliation artifact.

Every ``interval_s`` it gathers the signals (checkpoint actor: watermarks, commit ages, lag; the
store: ledger counts; the query counters; the kernel registry: mailboxes and restarts), evaluates
them against the threshold policy (pure, ``ctxplane.contracts.health``), updates the gauges and keeps the
report that the ``health`` op serves. Every ``artifact_interval_s`` and at shutdown it rewrites the
reconciliation artifact atomically (write to a temporary file, fsync, rename).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import orjson
import structlog
from anyio.abc import TaskStatus

from ctxplane.actors.tables.reads import basis_program
from ctxplane.contracts.health import HealthPolicy, HealthSignals, evaluate_health
from ctxplane.contracts.timestamps import now_utc, parse_ts_us
from ctxplane.runtime.exceptions import ActorUnavailable, AskTimeout, StoreError
from ctxplane.runtime.kernel import Actor, ActorContext, ActorRef, Registry
from ctxplane.runtime.store import Fetch, Program, StoreBackend

__all__ = ("HealthActor", "write_atomically")

log = structlog.get_logger("ctxplane.health")

_ANNOTATIONS = ("LATE_CONTEXT_EVENT", "LATE_TRAFFIC_EVENT")
# The periodic ledger read takes milliseconds on a healthy store; past this the store counts as
# unavailable. It bounds how long a store that stopped answering (a blackholed path) holds up the
# health actor, and with it an ask queued behind that read (the `health` op waits 0.8 s).
_STORE_READ_TIMEOUT_S = 0.5


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so a reader never sees a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def ledger_program(limit: int) -> Program[tuple[dict[str, int], list[dict[str, Any]]]]:
    rows = yield Fetch("SELECT reason_code, count(*) FROM apply_failures GROUP BY reason_code")
    counts = {reason: int(n) for reason, n in rows}
    recent = yield Fetch(
        "SELECT failure_id, plane, platform_run_id, scenario_run_id, topic, partition_id, source_offset, offset_kind,"
        " event_id, event_type, reason_code, details_json, recorded_at_utc FROM apply_failures"
        " WHERE reason_code NOT IN (?, ?) ORDER BY recorded_at_utc DESC, failure_id LIMIT ?",
        (*_ANNOTATIONS, limit),
    )
    keys = ("failure_id", "plane", "platform_run_id", "scenario_run_id", "topic", "partition_id", "offset",
            "offset_kind", "event_id", "event_type", "reason_code", "details", "recorded_at_utc")
    anomalies = []
    for row in recent:
        item = dict(zip(keys, row, strict=True))
        item["details"] = orjson.loads(item["details"])
        anomalies.append(item)
    return counts, anomalies


class HealthActor(Actor):
    def __init__(
        self,
        *,
        policy: HealthPolicy,
        checkpoint: ActorRef,
        registry: Registry,
        store: StoreBackend,
        scope: str,
        query_counts: Counter[str],
        metrics: Any,
        artifact_path: Path | None,
        artifact_interval_s: float,
        interval_s: float = 1.0,
    ) -> None:
        self._policy = policy
        self._checkpoint = checkpoint
        self._registry = registry
        self._store = store
        self._scope = scope
        self._query_counts = query_counts
        self._metrics = metrics
        self._artifact_path = artifact_path
        self._artifact_interval_s = artifact_interval_s
        self._interval_s = interval_s
        self._started_at = time.time()
        self.report: dict[str, Any] | None = None
        self._ledger: tuple[dict[str, int], list[dict[str, Any]]] = ({}, [])
        self._store_read_ok = True  # the last ledger read answered

    async def run(self, ctx: ActorContext, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        next_artifact = anyio.current_time() + self._artifact_interval_s
        while True:
            await self.refresh()
            if self._artifact_path is not None and anyio.current_time() >= next_artifact:
                await self.write_artifact()
                next_artifact = anyio.current_time() + self._artifact_interval_s
            with anyio.move_on_after(self._interval_s):
                message = await ctx.mailbox.get()
                if ctx.is_stop(message):
                    break
                _payload, reply = ctx.unwrap(message)
                if reply is not None:
                    # An asker gets the state as of now. While the last read failed, the store is
                    # not read again for it (the periodic refresh finds out when it is back): an
                    # ask must not wait on a store that stopped answering.
                    reply.send(await self.refresh(read_store=self._store_read_ok))
        await self.refresh()
        if self._artifact_path is not None:
            await self.write_artifact()
        await self.stopping()

    async def refresh(self, *, read_store: bool = True) -> dict[str, Any]:
        now = time.time()
        try:
            positions = await self._checkpoint.ask("positions", timeout=0.5)
        except (AskTimeout, ActorUnavailable):
            positions = {"partitions": [], "last_commit_age_s": None}
        partitions: list[dict[str, Any]] = positions["partitions"]  # type: ignore[index]
        store_ok = self._metrics.store_is_available if self._metrics is not None else True
        if read_store:
            try:
                # Bounded: a blackholed store must not freeze the health report (RED is the answer then).
                with anyio.fail_after(_STORE_READ_TIMEOUT_S):
                    self._ledger = await self._store.read(ledger_program(self._policy.max_unresolved_anomalies))
                self._store_read_ok = True
            except (StoreError, TimeoutError):
                self._store_read_ok = False
        store_ok = store_ok and self._store_read_ok
        counts = self._ledger[0]
        watermarks = [parse_ts_us(p["watermark_ts_utc"]) for p in partitions if p.get("watermark_ts_utc")]
        waiting = [p for p in partitions if p.get("lag")]
        checkpoint_age = None
        if waiting:
            ages = [p["last_commit_age_s"] if p.get("last_commit_age_s") is not None else now - self._started_at
                    for p in waiting]
            checkpoint_age = max(ages)
        elif partitions:
            checkpoint_age = 0.0
        actors = self._registry.snapshot()
        saturation = max((a.depth / a.capacity for a in actors if a.capacity), default=0.0)
        signals = HealthSignals(
            watermark_age_s=round(now - max(watermarks) / 1e6, 3) if watermarks else None,
            checkpoint_age_s=round(checkpoint_age, 3) if checkpoint_age is not None else None,
            join_misses=self._query_counts["join_misses"],
            binding_conflicts=counts.get("FLOW_BINDING_CONFLICT", 0),
            apply_failures_hard=sum(n for r, n in counts.items() if r not in _ANNOTATIONS),
            missing_features=self._query_counts["missing_features"],
            snapshot_failures=self._query_counts["snapshot_failures"],
            mailbox_saturation=saturation,
            actor_restarts=sum(a.restarts for a in actors),
            store_available=store_ok,
            partitions=len(partitions),
        )
        health = evaluate_health(signals, self._policy)
        for p in partitions:
            p["watermark_us"] = parse_ts_us(p["watermark_ts_utc"]) if p.get("watermark_ts_utc") else None
        if self._metrics is not None:
            self._metrics.on_positions(partitions)
            self._metrics.on_health(health["state"])
        for p in partitions:
            p.pop("watermark_us", None)
        self.report = {
            **health,
            "checked_at_utc": now_utc(),
            "anomaly_counts": counts,
            "partitions": partitions,
            "actors": [
                {"name": a.name, "state": a.state.value, "mailbox_depth": a.depth, "mailbox_capacity": a.capacity,
                 "restarts": a.restarts}
                for a in actors
            ],
        }
        return self.report

    async def write_artifact(self) -> None:
        assert self._artifact_path is not None
        report = self.report or await self.refresh()
        try:
            with anyio.fail_after(_STORE_READ_TIMEOUT_S):  # bounded like the ledger read
                basis = await self._store.read(basis_program(self._scope, ("join", "features")))
        except StoreError as exc:
            basis = {"error": str(exc)}
        except TimeoutError:
            basis = {"error": f"the store did not answer within {_STORE_READ_TIMEOUT_S} s"}
        artifact = {
            "generated_at_utc": now_utc(),
            "health": {k: report[k] for k in ("state", "reasons", "signals", "policy", "checked_at_utc")},
            "metrics": {**report["signals"], "anomaly_counts": report["anomaly_counts"],
                        "query_counts": dict(self._query_counts)},
            "applied_basis": basis,
            "partitions": report["partitions"],
            "unresolved_anomalies": self._ledger[1],
        }
        try:
            await anyio.to_thread.run_sync(
                write_atomically, self._artifact_path, orjson.dumps(artifact, option=orjson.OPT_INDENT_2))
        except OSError as exc:
            log.warning("cannot write the reconciliation artifact", path=str(self._artifact_path), error=str(exc))
