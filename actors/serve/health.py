"""The health actor: GREEN / AMBER / RED with reasons, Prometheus gauges, the reconciliation artifact.

Every ``interval_s`` it gathers the signals (checkpoint actor: watermarks, commit ages, lag; the
store: ledger counts; the query counters; the kernel registry: mailboxes and restarts), evaluates
them against the threshold policy (pure, ``ctxplane.contracts.health``), updates the gauges and keeps the
report that the ``health`` op serves. Every ``artifact_interval_s`` and at shutdown it rewrites the
reconciliation artifact atomically (write to a temporary file, fsync, rename).

The counted signals count what happened since :func:`~ctxplane.contracts.health.counted_since`: the
policy window, or the operator's last acknowledgement when later. Ledger rows are counted by their
``recorded_at_utc`` in the store (so a restart still sees a storm of a minute ago); the in-process
counters (query answers, restarts) through a :class:`~ctxplane.contracts.health.CounterWindow` that
outlives restarts of this actor. An acknowledgement (the ``health_ack`` op, ``ctxplane ack``) is
appended to ``health_acks.jsonl`` beside the artifact (who, why, when, the state and reasons it
acknowledged) and fsynced before it takes effect; the newest line is read back at start and
whenever the file changes, so it holds across restarts.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import anyio
import orjson
import structlog
from anyio.abc import TaskStatus

from ctxplane.actors.tables.ledger import reason_counts_program, recent_failures_program
from ctxplane.actors.tables.reads import basis_program
from ctxplane.contracts.answers import ErrorCode, Status
from ctxplane.contracts.health import (
    CounterWindow,
    HealthPolicy,
    HealthSignals,
    counted_since,
    evaluate_health,
    parse_ack_request,
)
from ctxplane.contracts.timestamps import format_ts_us, now_utc, parse_ts_us
from ctxplane.runtime.exceptions import ActorFailed, ActorUnavailable, AskTimeout, StoreError
from ctxplane.runtime.kernel import Actor, ActorContext, ActorRef, Registry
from ctxplane.runtime.server import error_response
from ctxplane.runtime.store import Program, StoreBackend

__all__ = ("HealthAckGate", "HealthActor", "append_durably", "write_atomically")

log = structlog.get_logger("ctxplane.health")

_ANNOTATIONS = ("LATE_CONTEXT_EVENT", "LATE_TRAFFIC_EVENT")
# The periodic ledger read takes milliseconds on a healthy store; past this the store counts as
# unavailable. It bounds how long a store that stopped answering (a blackholed path) holds up the
# health actor, and with it an ask queued behind that read (the `health` op waits 0.8 s).
_STORE_READ_TIMEOUT_S = 0.5


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so a reader never sees a half-written file.

    The file is owner-only (0600) whatever the umask, like the store: the reconciliation artifact
    lists the run's anomalies, event ids and offsets. ``fchmod`` as well as the creation mode, so a
    temp file left by a crash (which ``O_CREAT`` would reuse with its old mode) is tightened too.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        os.fchmod(fd, 0o600)
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def append_durably(path: Path, line: bytes) -> None:
    """Append one line to ``path`` and fsync it (an audit trail: written before it takes effect)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as fh:
        fh.write(line.rstrip(b"\n") + b"\n")
        fh.flush()
        os.fsync(fh.fileno())


def _last_ack(path: Path) -> dict[str, Any] | None:
    """The newest well-formed acknowledgement in ``path`` (None: none, or no file)."""
    try:
        lines = path.read_bytes().splitlines()
    except FileNotFoundError:
        return None
    for line in reversed(lines):
        try:
            ack = orjson.loads(line)
            ack["acked_at_us"] = parse_ts_us(ack["acked_at_utc"])
            return ack  # type: ignore[no-any-return]
        except (ValueError, KeyError, TypeError):
            continue  # a torn or hand-edited line: the one before it still counts
    return None


Ledger = tuple[dict[str, int], dict[str, int], list[dict[str, Any]]]


def ledger_program(limit: int, since_utc: str) -> Program[Ledger]:
    """Ledger counts per reason (all rows; rows recorded after ``since_utc``) and the newest anomalies."""
    counts = yield from reason_counts_program()
    recent_counts = yield from reason_counts_program(since_utc)
    recent = yield from recent_failures_program(_ANNOTATIONS, limit)
    keys = ("failure_id", "plane", "platform_run_id", "scenario_run_id", "topic", "partition_id", "offset",
            "offset_kind", "event_id", "event_type", "reason_code", "details", "recorded_at_utc")
    anomalies = []
    for row in recent:
        item = dict(zip(keys, row, strict=True))
        item["details"] = orjson.loads(item["details"])
        anomalies.append(item)
    return counts, recent_counts, anomalies


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
        counters: CounterWindow | None = None,
        acks_path: Path | None = None,
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
        self._ledger: Ledger = ({}, {}, [])
        self._store_read_ok = True  # the last ledger read answered
        # Shared by this actor's incarnations (tree.py), so a restart of the actor forgets nothing.
        self._counters = counters if counters is not None else CounterWindow()
        self._acks_path = acks_path
        self._acks_seen: tuple[int, int] | None = None  # (mtime_ns, size) of the acks file last read
        self._ack: dict[str, Any] | None = None

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
                payload, reply = ctx.unwrap(message)
                if reply is not None and isinstance(payload, tuple) and payload[:1] == ("ack",):
                    reply.send(await self.acknowledge(*payload[1:]))
                elif reply is not None:
                    # An asker gets the state as of now. While the last read failed, the store is
                    # not read again for it (the periodic refresh finds out when it is back): an
                    # ask must not wait on a store that stopped answering.
                    reply.send(await self.refresh(read_store=self._store_read_ok))
        await self.refresh()
        if self._artifact_path is not None:
            await self.write_artifact()
        await self.stopping()

    async def acknowledge(self, by: str, reason: str) -> dict[str, Any]:
        """Record an operator acknowledgement (audited first), then answer the state before and after."""
        before = await self.refresh(read_store=self._store_read_ok)
        ack = {"acked_at_utc": now_utc(), "by": by, "reason": reason,
               "state": before["state"], "reasons": before["reasons"], "pid": os.getpid()}
        if self._acks_path is None:
            return {"error": "this process has no health artifact directory to record acknowledgements in"}
        try:
            await anyio.to_thread.run_sync(append_durably, self._acks_path, orjson.dumps(ack))
        except OSError as exc:
            return {"error": f"cannot record the acknowledgement in {self._acks_path}: {exc.strerror or exc}"}
        self._ack = {**ack, "acked_at_us": parse_ts_us(ack["acked_at_utc"])}
        log.warning("health acknowledged", by=by, reason=reason, state=before["state"], reasons=before["reasons"],
                    audit=str(self._acks_path))
        after = await self.refresh(read_store=self._store_read_ok)
        return {"ack": ack, "before": {"state": before["state"], "reasons": before["reasons"]},
                "after": {"state": after["state"], "reasons": after["reasons"]}, "health": after}

    def _reload_ack(self) -> None:
        if self._acks_path is None:
            return
        try:
            st = self._acks_path.stat()
        except OSError:
            return
        seen = (st.st_mtime_ns, st.st_size)
        if seen != self._acks_seen:
            self._acks_seen = seen
            self._ack = _last_ack(self._acks_path) or self._ack

    async def refresh(self, *, read_store: bool = True) -> dict[str, Any]:
        now = time.time()
        self._reload_ack()
        acked_at = self._ack["acked_at_us"] / 1e6 if self._ack else None
        since = counted_since(now, self._policy.window_s, acked_at)
        since_utc = format_ts_us(int(since * 1_000_000))
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
                    self._ledger = await self._store.read(ledger_program(self._policy.max_unresolved_anomalies, since_utc))
                self._store_read_ok = True
            except (StoreError, TimeoutError):
                self._store_read_ok = False
        store_ok = store_ok and self._store_read_ok
        counts, recent, _anomalies = self._ledger
        watermarks = [parse_ts_us(p["watermark_ts_utc"]) for p in partitions if p.get("watermark_ts_utc")]
        # Records wait on the bus: a positive lag (file bus), or a reader behind the shard's tip (Kinesis).
        waiting = [p for p in partitions if p.get("lag") or p.get("behind_ms")]
        checkpoint_age = None
        if waiting:
            ages = [p["last_commit_age_s"] if p.get("last_commit_age_s") is not None else now - self._started_at
                    for p in waiting]
            checkpoint_age = max(ages)
        elif partitions:
            checkpoint_age = 0.0
        actors = self._registry.snapshot()
        saturation = max((a.depth / a.capacity for a in actors if a.capacity), default=0.0)
        self._counters.record(now, {
            "join_misses": self._query_counts["join_misses"],
            "missing_features": self._query_counts["missing_features"],
            "snapshot_failures": self._query_counts["snapshot_failures"],
            "actor_restarts": sum(a.restarts for a in actors),
        }, keep_s=self._policy.window_s)
        counted = self._counters.count_since(since)
        signals = HealthSignals(
            watermark_age_s=round(now - max(watermarks) / 1e6, 3) if watermarks else None,
            checkpoint_age_s=round(checkpoint_age, 3) if checkpoint_age is not None else None,
            join_misses=counted.get("join_misses", 0),
            binding_conflicts=recent.get("FLOW_BINDING_CONFLICT", 0),
            apply_failures_hard=sum(n for r, n in recent.items() if r not in _ANNOTATIONS),
            missing_features=counted.get("missing_features", 0),
            snapshot_failures=counted.get("snapshot_failures", 0),
            mailbox_saturation=saturation,
            actor_restarts=counted.get("actor_restarts", 0),
            store_available=store_ok,
            partitions=len(partitions),
        )
        health = evaluate_health(signals, self._policy)
        for p in partitions:
            p["watermark_us"] = parse_ts_us(p["watermark_ts_utc"]) if p.get("watermark_ts_utc") else None
        if self._metrics is not None:
            self._metrics.on_positions(partitions)
            self._metrics.on_health(health["state"])
            # /readyz: the store answers, and this process runs partition actors (leases: holds some).
            running = sum(1 for a in actors if a.name.startswith("partition:") and a.state.value == "running")
            self._metrics.on_readiness(store_available=store_ok, partitions_assigned=running, checked_at_utc=now_utc())
        for p in partitions:
            p.pop("watermark_us", None)
        ack = {k: v for k, v in self._ack.items() if k != "acked_at_us"} if self._ack else None
        self.report = {
            **health,
            "checked_at_utc": now_utc(),
            # The counted signals count from here: the window start, or the acknowledgement if later.
            "counted_since_utc": since_utc,
            "acknowledged": ack,
            "anomaly_counts": counts,  # every ledger row, by reason (the reconciliation view)
            "recent_anomaly_counts": recent,  # the rows counted now (since counted_since_utc)
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
        basis: Mapping[str, object]
        try:
            with anyio.fail_after(_STORE_READ_TIMEOUT_S):  # bounded like the ledger read
                basis = await self._store.read(basis_program(self._scope, ("join", "features")))
        except StoreError as exc:
            basis = {"error": str(exc)}
        except TimeoutError:
            basis = {"error": f"the store did not answer within {_STORE_READ_TIMEOUT_S} s"}
        artifact = {
            "generated_at_utc": now_utc(),
            "health": {k: report[k] for k in ("state", "reasons", "signals", "policy", "checked_at_utc",
                                               "counted_since_utc", "acknowledged")},
            "metrics": {**report["signals"], "anomaly_counts": report["anomaly_counts"],
                        "query_counts": dict(self._query_counts)},
            "applied_basis": basis,
            "partitions": report["partitions"],
            "unresolved_anomalies": self._ledger[2],
        }
        try:
            await anyio.to_thread.run_sync(
                write_atomically, self._artifact_path, orjson.dumps(artifact, option=orjson.OPT_INDENT_2))
        except OSError as exc:
            log.warning("cannot write the reconciliation artifact", path=str(self._artifact_path), error=str(exc))


class HealthAckGate:
    """The ``health_ack`` op of the query endpoint: checks, then an ask to the health actor.

    Runs in the supervisor's process (query workers forward the op to the query actor). Like drills,
    an acknowledgement is accepted only over the Unix socket, loopback TCP, or with the auth token.
    """

    def __init__(self, health: ActorRef, *, local_or_authenticated: bool) -> None:
        self._health = health
        self._allowed = local_or_authenticated

    async def handle(self, request: dict[str, Any], deadline_s: float) -> dict[str, Any]:
        request_id = request.get("request_id")
        if not self._allowed:
            return error_response(ErrorCode.FORBIDDEN, "health_ack is accepted only over a Unix socket, loopback TCP,"
                                  " or with the auth token", request_id=request_id)
        parsed = parse_ack_request(request)
        if isinstance(parsed, str):
            return error_response(ErrorCode.INVALID_REQUEST, parsed, request_id=request_id)
        try:
            # The health actor replies to an ("ack", by, reason) ask with HealthActor.acknowledge's dict.
            answer = cast(dict[str, Any], await self._health.ask(("ack", *parsed), timeout=max(0.05, deadline_s * 0.9)))
        except (AskTimeout, ActorUnavailable, ActorFailed) as exc:
            return error_response(ErrorCode.UNAVAILABLE, f"health actor: {exc}", request_id=request_id, retryable=True)
        if "error" in answer:
            return error_response(ErrorCode.UNAVAILABLE, answer["error"], request_id=request_id, retryable=False)
        return {"status": Status.OK, "request_id": request_id, **answer}
