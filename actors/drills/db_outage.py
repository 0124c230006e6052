"""The ``db-outage`` drill (ops/RUNBOOK.md §2): the store lost under load, and recovered from.

PostgreSQL is stopped (``pg_ctl stop -m immediate``) or its connections cut / blackholed by the
fault proxy (``actors/drills/faultproxy.py``) for N seconds while events are being published.
Queries must answer UNAVAILABLE (retryable) within their deadline, health must turn RED
``STORE_UNAVAILABLE``, nothing may restart, and after recovery every event is applied once.
"""

from __future__ import annotations

import itertools
import os
import shlex
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio

from ctxplane.actors.drills.kit import (
    Answer,
    Check,
    DrillReport,
    Endpoint,
    Workload,
    drill_workload,
    open_drill_bus,
    publish,
    read_figures,
    reason_counts,
    wait_caught_up,
)
from ctxplane.actors.drills.steps import (
    clean_pass_match,
    controller_status,
    digest_check,
    escalation_delta,
    figures_when_caught_up,
    restart_delta,
    unexplained_ledger,
)
from ctxplane.config.settings import Settings
from ctxplane.contracts.answers import JOIN_MISSES, Status
from ctxplane.runtime.exceptions import CtxplaneError, UsageError

__all__ = ("DbOutageOptions", "OutageObservations", "judge_db_outage", "run_db_outage")

# Scheduling slack allowed on top of a request's deadline (the client's clock includes the trip).
_DEADLINE_SLACK_S = 0.25
_MB = 1024 * 1024

# Answers a join request may get (an outage must not turn them into anything else).
_JOIN_ANSWERS = frozenset({Status.READY, *JOIN_MISSES, Status.CONFLICT})


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
        status0 = await controller_status(endpoint, first=True)
        before = await figures_when_caught_up(settings, bus, timeout_s=options.recovery_timeout_s)
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
        status1 = await controller_status(endpoint)
        after = await read_figures(settings)
        match, digest_detail = await clean_pass_match(settings, after, options.clean_pass)
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
        "anomalies": sum(unexplained_ledger(after.ledger_delta(before)).values()),
        "digest_match": match,
        "time_to_recover_s": round(recovered_s, 3) if recovered_s is not None else None,
        "queries_during_outage": len(outage),
        "query_reasons": reason_counts(outage),
        "max_answer_ms": round(max((a.seconds for a in outage), default=0.0) * 1000, 1),
        "health_states": sorted({state for state, _ in seen.health}),
        "health_reasons": sorted({r for _, reasons in seen.health for r in reasons}),
        "restarts": restart_delta(status0, status1),
        "escalations": escalation_delta(status0, status1),
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
    not_ok = [a for a in outage if (a.response or {}).get("status") not in _JOIN_ANSWERS]
    unavailable = [a for a in not_ok if a.response is not None and a.response.get("status") == Status.UNAVAILABLE]
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
              and figures["ready_after_recovery"] == Status.READY,
              f"caught up {figures['time_to_recover_s']} s after restore; last flow {figures['ready_after_recovery']}"),
        Check("every event applied exactly once", figures["applied"] == sent and figures["dedupe_added"] == sent
              and figures["rejected"] == 0,
              f"sent {sent}, applied {figures['applied']}, dedupe +{figures['dedupe_added']}, "
              f"duplicates {figures['duplicates']} (commits whose acknowledgement the outage cut)"),
        Check("nothing unexplained in the ledger", not unexplained_ledger(ledger_delta),
              f"ledger delta {ledger_delta or 0}"),
        Check("memory bounded during the outage",
              figures["rss_max_during_mb"] <= figures["rss_before_mb"] + options.rss_growth_mb,
              f"RSS {figures['rss_before_mb']} MB before, max {figures['rss_max_during_mb']} MB during "
              f"(bound +{options.rss_growth_mb} MB)"),
    ]
    return checks + digest_check(figures["digest_match"], digest_detail)
