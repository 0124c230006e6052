"""The failure drills of quality.md §Reliability, run against a running supervisor.

Each drill: gather figures before, cause the failure under load, watch the process through it,
restore, wait for recovery, gather figures after, then judge. Judging is pure (``judge_*``): the
same figures always give the same verdict, and the figures are printed with it. The invariant
behind every verdict is the one quality.md states: the state digest equals a clean single pass over
the same events, every re-delivery is counted as a duplicate, nothing unexplained is in the ledger.

- ``db-outage``: PostgreSQL stopped (``pg_ctl stop -m immediate``) or its connections cut /
  blackholed by the fault proxy (``actors/drills/faultproxy.py``) for N seconds while events are being
  published. Queries must answer UNAVAILABLE (retryable) within their deadline, health must turn
  RED ``STORE_UNAVAILABLE``, nothing may restart, and after recovery every event is applied once.
- ``offset-rollback``: checkpoints rewound by N in the running process: zero state change, the N
  re-delivered records counted (duplicates, or re-rejections for records that were rejected).
- ``conflict-storm``: K conflicting anchors and K payload-hash mismatches: every one recorded as an
  anomaly and nothing else, CONFLICT answers, throughput within a factor of a clean load, no restart.
- ``actor-fault``: N injected crashes of partition actors or the store-writer: restarts per
  strategy, escalation exactly when the restart intensity is exceeded, and full recovery.
"""

from __future__ import annotations

import itertools
import os
import shlex
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio

from ctxplane.actors.drills.kit import (
    POLL_S,
    Answer,
    Check,
    DrillReport,
    Endpoint,
    StoreFigures,
    Workload,
    clean_pass_digests,
    drill_workload,
    open_drill_bus,
    publish,
    read_figures,
    reason_counts,
    wait_caught_up,
)
from ctxplane.config.settings import Settings
from ctxplane.runtime.bus import EventBus
from ctxplane.runtime.client import QueryEndpointUnavailable
from ctxplane.runtime.exceptions import CtxplaneError, UsageError

__all__ = (
    "ActorFaultOptions",
    "ConflictStormOptions",
    "DbOutageOptions",
    "OffsetRollbackOptions",
    "judge_actor_fault",
    "judge_conflict_storm",
    "judge_db_outage",
    "judge_offset_rollback",
    "run_actor_fault",
    "run_conflict_storm",
    "run_db_outage",
    "run_offset_rollback",
)

_ANNOTATIONS = frozenset({"LATE_CONTEXT_EVENT", "LATE_TRAFFIC_EVENT"})
# Scheduling slack allowed on top of a request's deadline (the client's clock includes the trip).
_DEADLINE_SLACK_S = 0.25
_MB = 1024 * 1024


# -- shared steps --------------------------------------------------------------------------------


async def _status(endpoint: Endpoint, *, timeout_s: float = 30.0, first: bool = False) -> dict[str, Any]:
    """The controller's status (``first``: before the drill changed anything, so a process that is
    not there at all is said at once instead of waited for).

    Raises:
        UsageError: drills are disabled in the running process (or it does not answer).
        CtxplaneError: ``first`` and nothing serves the query endpoint (no socket, connection
            refused), or no controller answered within ``timeout_s``.
    """
    answer = await endpoint.request({"op": "drill", "action": "status", "deadline_ms": 5000})
    response = answer.response
    if response is None and first:
        try:
            await endpoint.probe()
        except QueryEndpointUnavailable as exc:
            raise CtxplaneError(f"{exc}: no `ctxplane run` serves it (start one with drills.enabled: true)") from None
    if response is not None and response.get("code") in ("DRILLS_DISABLED", "FORBIDDEN"):
        raise UsageError(f"the running process refuses drills: {response.get('detail')}")
    status = await endpoint.drill_until("status", timeout_s=timeout_s)
    if status is None:
        raise CtxplaneError(f"no drill controller answered within {timeout_s} s (is `ctxplane run` running?)")
    return status


def _restarts(status: dict[str, Any]) -> dict[str, int]:
    return {a["name"]: a["restarts"] for a in status["actors"]}


def _restart_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, int]:
    b, a = _restarts(before), _restarts(after)
    return {name: n - b.get(name, 0) for name, n in sorted(a.items()) if n - b.get(name, 0)}


def _escalation_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, int]:
    out = {name: n - before["escalations"].get(name, 0) for name, n in after["escalations"].items()}
    return {name: n for name, n in out.items() if n}


async def _clean_pass(settings: Settings, after: StoreFigures, enabled: bool) -> tuple[bool | None, str]:
    if not enabled:
        return None, "skipped (--no-clean-pass)"
    state, ledger = await clean_pass_digests(settings, after.checkpoints)
    ok = state == after.state_digest and ledger == after.ledger_digest
    return ok, (f"live state {after.state_digest[:16]} vs clean pass {state[:16]}; "
                f"live ledger {after.ledger_digest[:16]} vs clean pass {ledger[:16]}")


def _digest_check(match: bool | None, detail: str) -> list[Check]:
    return [] if match is None else [Check("digest equals a clean single pass", match, detail)]


def _unexplained_ledger(delta: dict[str, int], allowed: frozenset[str] = frozenset()) -> dict[str, int]:
    return {r: n for r, n in delta.items() if r not in _ANNOTATIONS and r not in allowed}


# -- db-outage -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DbOutageOptions:
    """How to cause the outage: ``method`` ``proxy`` (``proxy_control``: the fault proxy's control
    socket; ``fault`` ``cut`` or ``blackhole``) or ``pg-ctl`` (``pgbin``/``pgroot``: the server's
    binaries and data directory; run as the ``postgres`` user when we are root)."""

    seconds: float
    events: int = 5000
    payload_bytes: int = 0
    method: str = "proxy"
    proxy_control: str | None = None
    fault: str = "cut"
    pgbin: str | None = None
    pgroot: str | None = None
    deadline_ms: int = 1000
    recovery_timeout_s: float = 120.0
    clean_pass: bool = True
    rss_growth_mb: float = 100.0


class _Fault:
    """Turns the outage on and off (fault proxy or pg_ctl)."""

    def __init__(self, options: DbOutageOptions) -> None:
        self.options = options
        self._server_options = ""

    async def on(self) -> None:
        if self.options.method == "proxy":
            await self._proxy(self.options.fault)
        else:
            self._server_options = _server_options(os.path.join(str(self.options.pgroot), "data"))
            await self._pg_ctl("stop", "-m", "immediate")

    async def off(self) -> None:
        if self.options.method == "proxy":
            await self._proxy("restore")
        else:
            # Started again exactly as it ran (port, socket directory, settings): pg_ctl start
            # alone would fall back to the defaults.
            await self._pg_ctl("start", "-l", os.path.join(str(self.options.pgroot), "server.log"),
                               "-o", self._server_options)

    async def _proxy(self, command: str) -> None:
        from ctxplane.actors.drills.faultproxy import control

        assert self.options.proxy_control is not None
        try:
            await anyio.to_thread.run_sync(control, self.options.proxy_control, command)
        except OSError as exc:
            raise CtxplaneError(f"fault proxy at {self.options.proxy_control}: {exc}") from None

    async def _pg_ctl(self, *args: str) -> None:
        o = self.options
        command = [os.path.join(str(o.pgbin), "pg_ctl"), "-D", os.path.join(str(o.pgroot), "data"), "-w", "-t", "60", *args]
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root (ops/pg_up.sh runs it as postgres)
            command = ["runuser", "-u", "postgres", "--", *command]
        result = await anyio.run_process(command, check=False)
        if result.returncode != 0:
            raise CtxplaneError(f"pg_ctl {args[0]} failed (exit {result.returncode}): "
                                f"{result.stderr.decode(errors='replace').strip()[-300:]}")


def _server_options(data_dir: str) -> str:
    """The command-line options the running server was started with (from ``postmaster.opts``),
    minus the binary and its data directory, as one string for ``pg_ctl start -o``."""
    try:
        with open(os.path.join(data_dir, "postmaster.opts"), encoding="utf-8") as fh:
            words = shlex.split(fh.read())
    except OSError as exc:
        raise CtxplaneError(f"cannot read the server's options from {data_dir}/postmaster.opts: {exc}") from None
    options: list[str] = []
    skip = False
    for word in words[1:]:
        if skip:
            skip = False
        elif word == "-D":
            skip = True
        else:
            options.append(word)
    return shlex.join(options)


@dataclass(slots=True)
class OutageObservations:
    """What the drill saw while the store was down."""

    answers: list[Answer] = field(default_factory=list)  # resolve_flow_binding probes
    health: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)  # (state, reasons)
    rss: list[int] = field(default_factory=list)
    store_flags: list[bool] = field(default_factory=list)


async def _observe(endpoint: Endpoint, workload: Workload, deadline_ms: int, until: float, seen: OutageObservations) -> None:
    """Probe queries, health and the controller until ``until`` (monotonic)."""
    pins, flows = workload.pins(), workload.flows()
    for flow in itertools.cycle(flows):
        if time.monotonic() >= until:
            return
        seen.answers.append(await endpoint.request(
            {"op": "resolve_flow_binding", "pins": pins, "flow_id": flow, "deadline_ms": deadline_ms}))
        health = (await endpoint.request({"op": "health", "deadline_ms": deadline_ms})).response
        if health is not None and "health" in health:
            seen.health.append((health["health"]["state"], tuple(health["health"]["reasons"])))
        status = await endpoint.drill("status", deadline_ms=deadline_ms)
        if status is not None:
            if status.get("rss_bytes"):
                seen.rss.append(status["rss_bytes"])
            seen.store_flags.append(status["store_available"])
        await anyio.sleep(0.1)  # pacing: about five probe rounds a second


async def run_db_outage(settings: Settings, options: DbOutageOptions) -> DrillReport:
    """Run the DB outage drill; see the module docstring."""
    if settings.store.backend != "postgresql":
        raise UsageError("db-outage needs a PostgreSQL store (store.dsn: postgresql://...); SQLite has no server to lose")
    if options.method == "proxy" and not options.proxy_control:
        raise UsageError("db-outage --method proxy needs --proxy-control unix:PATH (the fault proxy's control socket)")
    if options.method == "pg-ctl" and not (options.pgbin and options.pgroot):
        raise UsageError("db-outage --method pg-ctl needs --pgbin and --pgroot (or PGBIN and PGROOT in the environment)")
    fault = _Fault(options)
    endpoint = Endpoint(settings)
    bus = open_drill_bus(settings)
    try:
        status0 = await _status(endpoint, first=True)
        if await wait_caught_up(settings, bus, timeout_s=options.recovery_timeout_s) is None:
            raise CtxplaneError("the process did not catch up with the bus before the drill; nothing was changed")
        before = await read_figures(settings)
        workload = drill_workload(settings, options.events, payload_bytes=options.payload_bytes)
        chunks = workload.chunks(max(2, int(options.seconds * 5)))
        # In flight at the moment of the fault: the first chunk goes out just before it.
        sent = await publish(bus, chunks[0])
        seen = OutageObservations()
        rss_before = status0.get("rss_bytes") or 0
        await fault.on()
        fault_at = time.monotonic()
        restore_at = fault_at + options.seconds
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_observe, endpoint, workload, options.deadline_ms, restore_at, seen)
                # The producer keeps publishing through the outage (the bus is not the store).
                for k, chunk in enumerate(chunks[1:], start=1):
                    await anyio.sleep(max(0.0, fault_at + options.seconds * k / len(chunks) - time.monotonic()))
                    sent += await publish(bus, chunk)
        finally:
            with anyio.CancelScope(shield=True):
                await fault.off()
        restored = time.monotonic()
        recovered_s = await wait_caught_up(settings, bus, timeout_s=options.recovery_timeout_s)
        ready = await endpoint.request({"op": "resolve_flow_binding", "pins": workload.pins(),
                                        "flow_id": workload.flows()[-1], "deadline_ms": options.deadline_ms})
        status1 = await _status(endpoint)
        after = await read_figures(settings)
        match, digest_detail = await _clean_pass(settings, after, options.clean_pass)
    finally:
        await endpoint.aclose()
        await bus.aclose()
    outage = [a for a in seen.answers if a.at < restored]
    figures: dict[str, Any] = {
        "method": options.method if options.method == "pg-ctl" else f"proxy-{options.fault}",
        "outage_s": round(restored - fault_at, 3),
        "events_sent": sent,
        "applied": after.delta(before, "applied"),
        "dedupe_added": after.dedupe - before.dedupe,
        "duplicates": after.delta(before, "duplicate"),
        "rejected": after.delta(before, "rejected"),
        "anomalies": sum(_unexplained_ledger(after.ledger_delta(before)).values()),
        "digest_match": match,
        "time_to_recover_s": round(recovered_s, 3) if recovered_s is not None else None,
        "queries_during_outage": len(outage),
        "query_reasons": reason_counts(outage),
        "max_answer_ms": round(max((a.seconds for a in outage), default=0.0) * 1000, 1),
        "health_states": sorted({state for state, _ in seen.health}),
        "health_reasons": sorted({r for _, reasons in seen.health for r in reasons}),
        "restarts": _restart_delta(status0, status1),
        "escalations": _escalation_delta(status0, status1),
        # Whether the store-writer itself reported the store unavailable (a blackhole shorter than
        # a commit's timeout only holds its commit: it need not notice, and that is fine).
        "writer_reported_unavailable": (not all(seen.store_flags)) if seen.store_flags else None,
        "rss_before_mb": round(rss_before / _MB, 1),
        "rss_max_during_mb": round(max(seen.rss, default=0) / _MB, 1),
        "ready_after_recovery": (ready.response or {}).get("status"),
        "same_process": status0["pid"] == status1["pid"],
    }
    return DrillReport("db-outage", figures, judge_db_outage(figures, options, digest_detail=digest_detail,
                                                             ledger_delta=after.ledger_delta(before),
                                                             outage=outage))


def judge_db_outage(
    figures: dict[str, Any], options: DbOutageOptions, *, digest_detail: str, ledger_delta: dict[str, int],
    outage: Sequence[Answer],
) -> list[Check]:
    """The db-outage verdict from its figures (pure)."""
    deadline_s = options.deadline_ms / 1000
    not_ok = [a for a in outage if (a.response or {}).get("status") not in ("READY", "MISSING_BINDING", "MISSING_JOIN_FRAME", "CONFLICT")]
    unavailable = [a for a in not_ok if a.response is not None and a.response.get("status") == "UNAVAILABLE"]
    late = [a for a in outage if a.seconds > deadline_s + _DEADLINE_SLACK_S]
    store_unavailable = sum(1 for a in unavailable if a.reason == "STORE_UNAVAILABLE")
    sent = figures["events_sent"]
    checks = [
        Check("queries answered UNAVAILABLE/STORE_UNAVAILABLE during the outage",
              store_unavailable > 0 and len(unavailable) == len(not_ok)
              and all(a.response is not None and a.response.get("retryable") for a in unavailable),
              f"{figures['queries_during_outage']} queries: {figures['query_reasons']}"),
        Check("every query answered within its deadline", not late,
              f"max {figures['max_answer_ms']} ms for a {options.deadline_ms} ms deadline; {len(late)} late"),
        Check("health went RED with STORE_UNAVAILABLE",
              "RED" in figures["health_states"] and "STORE_UNAVAILABLE" in figures["health_reasons"],
              f"states {figures['health_states']}, reasons {figures['health_reasons']}"),
        Check("no restart, no escalation (the store-writer held its batches)",
              not figures["restarts"] and not figures["escalations"] and figures["same_process"],
              f"restarts {figures['restarts'] or 0}, escalations {figures['escalations'] or 0}"),
        Check("recovered without operator action", figures["time_to_recover_s"] is not None
              and figures["ready_after_recovery"] == "READY",
              f"caught up {figures['time_to_recover_s']} s after restore; last flow {figures['ready_after_recovery']}"),
        Check("every event applied exactly once", figures["applied"] == sent and figures["dedupe_added"] == sent
              and figures["rejected"] == 0,
              f"sent {sent}, applied {figures['applied']}, dedupe +{figures['dedupe_added']}, "
              f"duplicates {figures['duplicates']} (commits whose acknowledgement the outage cut)"),
        Check("nothing unexplained in the ledger", not _unexplained_ledger(ledger_delta),
              f"ledger delta {ledger_delta or 0}"),
        Check("memory bounded during the outage",
              figures["rss_max_during_mb"] <= figures["rss_before_mb"] + options.rss_growth_mb,
              f"RSS {figures['rss_before_mb']} MB before, max {figures['rss_max_during_mb']} MB during "
              f"(bound +{options.rss_growth_mb} MB)"),
    ]
    return checks + _digest_check(figures["digest_match"], digest_detail)


# -- offset-rollback -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OffsetRollbackOptions:
    by: int
    topic: str | None = None
    partition: int | None = None
    timeout_s: float = 120.0


async def _window_records(bus: EventBus, topic: str, partition: int, start: int, stop: int) -> int:
    """Records (blank lines excluded) at offsets ``start`` (incl.) to ``stop`` (excl.)."""
    count, position = 0, start
    while position < stop:
        result = await bus.read(topic, partition, str(position), min(1000, stop - position), 64 * _MB)
        count += sum(1 for r in result.records if int(r.offset) < stop)
        if int(result.next_position) == position:
            break
        position = int(result.next_position)
    return count


async def run_offset_rollback(settings: Settings, options: OffsetRollbackOptions) -> DrillReport:
    """Run the offset-rollback drill; see the module docstring."""
    endpoint = Endpoint(settings)
    bus = open_drill_bus(settings)
    try:
        status0 = await _status(endpoint, first=True)
        if await wait_caught_up(settings, bus, timeout_s=options.timeout_s) is None:
            raise CtxplaneError("the process did not catch up with the bus before the drill; nothing was changed")
        before = await read_figures(settings)
        fields: dict[str, Any] = {"by": options.by}
        if options.topic is not None:
            fields["topic"] = options.topic
        if options.partition is not None:
            fields["partition"] = options.partition
        began = time.monotonic()
        result = await endpoint.drill("rewind", deadline_ms=int(options.timeout_s * 1000), **fields)
        if result is None or "error" in result:
            raise CtxplaneError(f"the rewind was refused: {(result or {}).get('error', 'no answer from the controller')}")
        redelivered = 0
        for r in result["rewound"]:
            redelivered += await _window_records(bus, r["topic"], r["partition"], int(r["to_offset"]), int(r["from_offset"]))
        recovered_s = await wait_caught_up(settings, bus, timeout_s=options.timeout_s)
        recovered_at = time.monotonic()
        status1 = await _status(endpoint)
        after = await read_figures(settings)
    finally:
        await endpoint.aclose()
        await bus.aclose()
    recounted = sum(after.delta(before, n) for n in ("duplicate", "rejected", "ignored", "payload_hash_mismatch"))
    figures: dict[str, Any] = {
        "partitions_rewound": len(result["rewound"]),
        "rewound": [f"{r['topic']}:{r['partition']} {r['from_offset']}->{r['to_offset']}" for r in result["rewound"]],
        "rewind_errors": result["errors"],
        "events_sent": 0,
        "redelivered": redelivered,
        "applied": after.delta(before, "applied"),
        "duplicates": after.delta(before, "duplicate"),
        "recounted": recounted,
        "anomalies": sum(_unexplained_ledger(after.ledger_delta(before)).values()),
        "digest_match": after.state_digest == before.state_digest,
        "ledger_digest_match": after.ledger_digest == before.ledger_digest,
        "checkpoints_restored": after.checkpoints == before.checkpoints,
        "rewinds_audited": after.rewinds - before.rewinds,
        "time_to_recover_s": round(recovered_at - began, 3) if recovered_s is not None else None,
        "restarts": _restart_delta(status0, status1),
    }
    return DrillReport("offset-rollback", figures, judge_offset_rollback(figures, options))


def judge_offset_rollback(figures: dict[str, Any], options: OffsetRollbackOptions) -> list[Check]:
    """The offset-rollback verdict from its figures (pure)."""
    rewound = figures["partitions_rewound"]
    return [
        Check("checkpoints rewound below the applied basis, audited", rewound > 0 and not figures["rewind_errors"]
              and figures["rewinds_audited"] == rewound,
              f"{figures['rewound']}; audit rows +{figures['rewinds_audited']}; errors {figures['rewind_errors'] or 0}"),
        Check("zero state change", figures["digest_match"] and figures["ledger_digest_match"] and figures["applied"] == 0,
              f"state digest equal: {figures['digest_match']}, ledger digest equal: {figures['ledger_digest_match']}, "
              f"applied {figures['applied']}"),
        Check("every re-delivery counted", figures["recounted"] == figures["redelivered"],
              f"{figures['redelivered']} records re-delivered; {figures['duplicates']} duplicates, "
              f"{figures['recounted']} counted in all"),
        Check("caught up again", figures["checkpoints_restored"] and figures["time_to_recover_s"] is not None,
              f"checkpoints back where they were after {figures['time_to_recover_s']} s"),
        Check("only the rewound partition actors restarted (by the drill, not by a crash)",
              not figures["restarts"], f"supervised restarts {figures['restarts'] or 0}"),
    ]


# -- conflict-storm ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConflictStormOptions:
    count: int = 2000
    min_throughput_ratio: float = 0.2
    timeout_s: float = 300.0
    clean_pass: bool = True
    samples: int = 20


def storm_events(workload: Workload) -> tuple[list[tuple[str, dict[str, Any]]], set[str], set[str]]:
    """For every flow of ``workload``: a second anchor claiming its join key under another flow id
    (a binding and a frame-role conflict), and its arrival event again with a changed payload
    (a payload-hash mismatch). Returns (events, conflicting anchor ids, mismatched event ids)."""
    storm: list[tuple[str, dict[str, Any]]] = []
    anchors: set[str] = set()
    mismatched: set[str] = set()
    for topic, env in workload.items:
        if "flow_anchor" in topic:
            dup = {**env, "event_id": f"{int(env['event_id'], 16) ^ 1:064x}",
                   "payload": {**env["payload"], "flow_id": f"{env['payload']['flow_id']}-storm"}}
            storm.append((topic, dup))
            anchors.add(dup["event_id"])
        elif topic.endswith("arrival_events.v1"):
            changed = {**env, "payload": {**env["payload"], "site_id": "storm-site"}}
            storm.append((topic, changed))
            mismatched.add(env["event_id"])
    return storm, anchors, mismatched


async def _timed_apply(settings: Settings, bus: EventBus, items: list[tuple[str, dict[str, Any]]], timeout_s: float) -> float:
    started = time.monotonic()
    await publish(bus, items)
    took = await wait_caught_up(settings, bus, timeout_s=timeout_s)
    if took is None:
        raise CtxplaneError(f"{len(items)} events were not applied within {timeout_s} s")
    return time.monotonic() - started


async def run_conflict_storm(settings: Settings, options: ConflictStormOptions) -> DrillReport:
    """Run the conflict-storm drill; see the module docstring."""
    if not settings.join_plane.enabled:
        raise UsageError("conflict-storm needs the join plane (join_plane.enabled: true)")
    endpoint = Endpoint(settings)
    bus = open_drill_bus(settings)
    try:
        status0 = await _status(endpoint, first=True)
        if await wait_caught_up(settings, bus, timeout_s=options.timeout_s) is None:
            raise CtxplaneError("the process did not catch up with the bus before the drill; nothing was changed")
        before = await read_figures(settings)
        workload = drill_workload(settings, options.count * 5)
        clean_s = await _timed_apply(settings, bus, workload.items, options.timeout_s)
        storm, anchors, mismatched = storm_events(workload)
        storm_s = await _timed_apply(settings, bus, storm, options.timeout_s)
        pins = workload.pins()
        flows = workload.flows()
        step = max(1, len(flows) // max(1, options.samples))
        sample = flows[::step][: options.samples]
        answers = [await endpoint.request({"op": "resolve_flow_binding", "pins": pins, "flow_id": f, "deadline_ms": 2000})
                   for f in sample + [f"{f}-storm" for f in sample]]
        status1 = await _status(endpoint)
        after = await read_figures(settings)
        match, digest_detail = await _clean_pass(settings, after, options.clean_pass)
    finally:
        await endpoint.aclose()
        await bus.aclose()
    new_keys = after.ledger_keys - before.ledger_keys
    originals = {env["event_id"] for topic, env in workload.items if "flow_anchor" in topic}
    explained = {
        "FLOW_BINDING_CONFLICT": anchors | originals,
        "JOIN_FRAME_ROLE_CONFLICT": anchors | originals,
        "INTAKE_PAYLOAD_HASH_MISMATCH": mismatched,
    }
    unexplained = sorted(f"{reason}:{eid}" for eid, reason in new_keys
                         if reason not in _ANNOTATIONS and eid not in explained.get(reason, ()))
    recorded = {reason: {eid for eid, r in new_keys if r == reason} for reason in explained}
    figures: dict[str, Any] = {
        "events_sent": len(workload.items) + len(storm),
        "conflicting_anchors": len(anchors),
        "payload_mismatches": len(mismatched),
        "applied": after.delta(before, "applied"),
        "duplicates": after.delta(before, "duplicate"),
        "payload_hash_mismatch_counted": after.delta(before, "payload_hash_mismatch"),
        "anomalies": sum(_unexplained_ledger(after.ledger_delta(before)).values()),
        "ledger_delta": after.ledger_delta(before),
        "anchors_recorded": len(recorded["FLOW_BINDING_CONFLICT"] & anchors),
        "mismatches_recorded": len(recorded["INTAKE_PAYLOAD_HASH_MISMATCH"] & mismatched),
        "unexplained_ledger": len(unexplained),
        "conflict_answers": sum(1 for a in answers if (a.response or {}).get("status") == "CONFLICT"),
        "answers_sampled": len(answers),
        "answer_reasons": reason_counts(answers),
        "clean_events_per_s": round(len(workload.items) / clean_s, 1),
        "storm_events_per_s": round(len(storm) / storm_s, 1),
        "digest_match": match,
        "restarts": _restart_delta(status0, status1),
        "escalations": _escalation_delta(status0, status1),
    }
    return DrillReport("conflict-storm", figures, judge_conflict_storm(figures, options, digest_detail, unexplained[:5]))


def judge_conflict_storm(figures: dict[str, Any], options: ConflictStormOptions, digest_detail: str,
                         unexplained: Sequence[str]) -> list[Check]:
    """The conflict-storm verdict from its figures (pure)."""
    ratio = figures["storm_events_per_s"] / figures["clean_events_per_s"] if figures["clean_events_per_s"] else 0.0
    checks = [
        Check("every conflicting anchor and payload mismatch recorded as an anomaly",
              figures["anchors_recorded"] == figures["conflicting_anchors"]
              and figures["mismatches_recorded"] == figures["payload_mismatches"]
              and figures["payload_hash_mismatch_counted"] == figures["payload_mismatches"],
              f"anchors {figures['anchors_recorded']}/{figures['conflicting_anchors']}, mismatches "
              f"{figures['mismatches_recorded']}/{figures['payload_mismatches']}; ledger delta {figures['ledger_delta']}"),
        Check("nothing unexplained in the ledger", figures["unexplained_ledger"] == 0,
              f"{figures['unexplained_ledger']} unexplained rows {list(unexplained)}"),
        Check("conflicted flows answer CONFLICT", figures["conflict_answers"] == figures["answers_sampled"] > 0,
              f"{figures['conflict_answers']} of {figures['answers_sampled']} sampled: {figures['answer_reasons']}"),
        Check("throughput holds", ratio >= options.min_throughput_ratio,
              f"storm {figures['storm_events_per_s']} events/s vs clean {figures['clean_events_per_s']} events/s "
              f"(ratio {ratio:.2f}, floor {options.min_throughput_ratio})"),
        Check("no crash", not figures["restarts"] and not figures["escalations"],
              f"restarts {figures['restarts'] or 0}, escalations {figures['escalations'] or 0}"),
    ]
    return checks + _digest_check(figures["digest_match"], digest_detail)


# -- actor-fault ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ActorFaultOptions:
    target: str
    times: int = 1
    topic: str | None = None
    partition: int | None = None
    events: int = 2000
    timeout_s: float = 120.0
    clean_pass: bool = True


def _supervisor_for(target: str) -> str:
    return "partitions" if target == "partition" else "root"


def exceeds_intensity(times: Sequence[float], max_restarts: int, period_s: float) -> bool:
    """True when more than ``max_restarts`` of the restart ``times`` fall within some ``period_s``."""
    ordered = sorted(times)
    for i, start in enumerate(ordered):
        if sum(1 for t in ordered[i:] if t - start <= period_s) > max_restarts:
            return True
    return False


async def _inject(endpoint: Endpoint, timeout_s: float, fields: dict[str, Any]) -> dict[str, Any] | None:
    """One ``inject``, retried while the target is between incarnations (a fault needs a live
    actor) or its mailbox stays full; a refused inject was not delivered, so a retry is safe."""
    answer: dict[str, Any] | None = None
    with anyio.move_on_after(timeout_s):
        while True:
            answer = await endpoint.drill("inject", **fields)
            error = (answer or {}).get("error", "")
            if answer is not None and "not running" not in error and "busy" not in error:
                return answer
            await anyio.sleep(POLL_S)
    return answer


async def _wait_restarted(endpoint: Endpoint, name: str, before: int, escalations: int, timeout_s: float) -> dict[str, Any] | None:
    """Poll the controller until ``name`` restarted (running again with more restarts than
    ``before``) or an escalation happened; the status then, or None at the timeout."""
    with anyio.move_on_after(timeout_s):
        while True:
            status = await endpoint.drill("status")
            if status is not None:
                actors = {a["name"]: a for a in status["actors"]}
                row = actors.get(name)
                if sum(status["escalations"].values()) > escalations:
                    return status
                if row is not None and row["restarts"] > before and row["state"] == "running":
                    return status
            await anyio.sleep(POLL_S)
    return None


async def run_actor_fault(settings: Settings, options: ActorFaultOptions) -> DrillReport:
    """Run the actor-fault drill; see the module docstring.

    Faults go to one actor (the store-writer, or the selected partition) one after another, each
    once the previous restart is done; or, for ``partition`` without ``--partition``, round-robin
    over the topic's (or every) partition actor, back to back — so N > the partitions supervisor's
    intensity exceeds it and shows the escalation.
    """
    endpoint = Endpoint(settings)
    bus = open_drill_bus(settings)
    try:
        status0 = await _status(endpoint, first=True)
        sup = status0["supervisors"][_supervisor_for(options.target)]
        intensity = sup["intensity"]
        if options.target == "store-writer" and options.times > intensity["max_restarts"]:
            raise UsageError(
                f"--times {options.times} exceeds the root supervisor's intensity ({intensity['max_restarts']} restarts in "
                f"{intensity['period_s']} s): it would escalate and stop the whole process; inject at most "
                f"{intensity['max_restarts']} store-writer faults")
        if await wait_caught_up(settings, bus, timeout_s=options.timeout_s) is None:
            raise CtxplaneError("the process did not catch up with the bus before the drill; nothing was changed")
        before = await read_figures(settings)
        workload = drill_workload(settings, options.events)
        sent = await publish(bus, workload.items)  # the faults land while this is being applied
        targets = _fault_targets(status0, options)
        injected_at: list[float] = []
        errors: list[str] = []
        status = status0
        for k in range(options.times):
            name = targets[k % len(targets)]
            row_before = next((a["restarts"] for a in status["actors"] if a["name"] == name), 0)
            escalations = sum(status["escalations"].values())
            fields: dict[str, Any] = {"target": options.target}
            if options.target == "partition":
                topic, _, partition = name.removeprefix("partition:").rpartition(":")
                fields.update(topic=topic, partition=int(partition))
            answer = await _inject(endpoint, options.timeout_s, fields)
            if answer is None or "error" in answer:
                errors.append(f"{name}: {(answer or {}).get('error', 'no answer')}")
                continue
            injected_at.append(time.monotonic())
            if len(targets) == 1:
                # The same actor again: only once it is back (a fault to a dead actor is refused).
                latest = await _wait_restarted(endpoint, name, row_before, escalations, options.timeout_s)
                if latest is None:
                    errors.append(f"{name} did not restart within {options.timeout_s} s")
                    break
                status = latest
        recovered_s = await _recover(settings, endpoint, bus, options.timeout_s)
        status1 = await _status(endpoint)
        after = await read_figures(settings)
        match, digest_detail = await _clean_pass(settings, after, options.clean_pass)
    finally:
        await endpoint.aclose()
        await bus.aclose()
    figures: dict[str, Any] = {
        "target": options.target,
        "faults_injected": len(injected_at),
        "actors_targeted": len(targets),
        "intensity": f"{intensity['max_restarts']}/{intensity['period_s']}s",
        "intensity_exceeded": exceeds_intensity(injected_at, intensity["max_restarts"], intensity["period_s"]),
        "restarts": _restart_delta(status0, status1),
        "root_restarts": {k: v - status0["supervisors"]["root"]["restarts"].get(k, 0)
                          for k, v in status1["supervisors"]["root"]["restarts"].items()
                          if v - status0["supervisors"]["root"]["restarts"].get(k, 0)},
        "escalations": _escalation_delta(status0, status1),
        "events_sent": sent,
        "applied": after.delta(before, "applied"),
        "duplicates": after.delta(before, "duplicate"),
        "anomalies": sum(_unexplained_ledger(after.ledger_delta(before)).values()),
        "digest_match": match,
        "time_to_recover_s": round(recovered_s, 3) if recovered_s is not None else None,
        "errors": errors,
    }
    return DrillReport("actor-fault", figures, judge_actor_fault(figures, options, targets, digest_detail))


def _fault_targets(status: dict[str, Any], options: ActorFaultOptions) -> list[str]:
    if options.target == "store-writer":
        return ["store-writer"]
    names = [n for n in status["partitions"]]
    if options.topic is not None:
        names = [n for n in names if n.startswith(f"partition:{options.topic}:")]
        if options.partition is not None:
            names = [n for n in names if n == f"partition:{options.topic}:{options.partition}"]
    if not names:
        raise UsageError(f"no partition actor matches --topic {options.topic} --partition {options.partition}")
    return names


async def _recover(settings: Settings, endpoint: Endpoint, bus: EventBus, timeout_s: float) -> float | None:
    """Seconds until every actor runs again and the process caught up with the bus."""
    started = time.monotonic()
    with anyio.move_on_after(timeout_s):
        while True:
            status = await endpoint.drill("status")
            if status is not None and all(a["state"] == "running" for a in status["actors"]):
                break
            await anyio.sleep(POLL_S)
    took = await wait_caught_up(settings, bus, timeout_s=max(1.0, timeout_s - (time.monotonic() - started)))
    return None if took is None else time.monotonic() - started


def judge_actor_fault(figures: dict[str, Any], options: ActorFaultOptions, targets: Sequence[str], digest_detail: str) -> list[Check]:
    """The actor-fault verdict from its figures (pure): restarts per strategy, escalation exactly
    when the intensity was exceeded, then full recovery with the clean-pass state."""
    restarts: dict[str, int] = figures["restarts"]
    escalated = bool(figures["escalations"])
    injected = figures["faults_injected"]
    if options.target == "store-writer":
        # rest_for_one: the store-writer and every child started after it, once per fault.
        expected_root = {name: injected for name in ("store-writer", "checkpoint", "query", "partitions", "health", "drills")}
        strategy_ok = all(figures["root_restarts"].get(name, 0) == n for name, n in expected_root.items())
        strategy_detail = f"root restarts {figures['root_restarts']} (rest_for_one: {injected} each expected)"
    elif escalated:
        # The partitions supervisor gave up; the root restarted it (and, rest_for_one, health and drills).
        strategy_ok = figures["root_restarts"].get("partitions", 0) >= 1
        strategy_detail = f"partitions supervisor escalated; root restarts {figures['root_restarts']}"
    else:
        # one_for_one: exactly the targeted actors, once per fault; nothing at the root.
        per_target = Counter(targets[k % len(targets)] for k in range(injected))
        strategy_ok = restarts == dict(per_target) and not figures["root_restarts"]
        strategy_detail = f"restarts {restarts or 0} (one_for_one: {dict(per_target)} expected)"
    checks = [
        Check("every fault injected", injected == options.times and not figures["errors"],
              f"{injected} of {options.times}; errors {figures['errors'] or 0}"),
        Check("supervised restarts per strategy", strategy_ok, strategy_detail),
        Check("escalation exactly when the intensity is exceeded", escalated == figures["intensity_exceeded"],
              f"intensity {figures['intensity']}, exceeded: {figures['intensity_exceeded']}, "
              f"escalations {figures['escalations'] or 0}"),
        Check("recovered: all actors running, caught up", figures["time_to_recover_s"] is not None,
              f"{figures['time_to_recover_s']} s after the last fault"),
        Check("every event applied exactly once", figures["applied"] == figures["events_sent"],
              f"sent {figures['events_sent']}, applied {figures['applied']}, duplicates {figures['duplicates']} "
              "(batches re-read after the crashes)"),
        Check("nothing unexplained in the ledger", figures["anomalies"] == 0, f"{figures['anomalies']} anomalies"),
    ]
    return checks + _digest_check(figures["digest_match"], digest_detail)
