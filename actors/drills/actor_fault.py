"""The ``actor-fault`` drill (ops/RUNBOOK.md §2): injected crashes, restarted per strategy.

N injected crashes of partition actors or the store-writer: restarts per strategy, escalation
exactly when the restart intensity is exceeded, and full recovery.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import anyio

from ctxplane.actors.drills.kit import (
    POLL_S,
    Check,
    DrillReport,
    Endpoint,
    drill_workload,
    open_drill_bus,
    publish,
    read_figures,
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
from ctxplane.runtime.bus import EventBus
from ctxplane.runtime.exceptions import UsageError

__all__ = ("ActorFaultOptions", "exceeds_intensity", "judge_actor_fault", "run_actor_fault")


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
        status0 = await controller_status(endpoint, first=True)
        sup = status0["supervisors"][_supervisor_for(options.target)]
        intensity = sup["intensity"]
        if options.target == "store-writer" and options.times > intensity["max_restarts"]:
            raise UsageError(
                f"--times {options.times} exceeds the root supervisor's intensity ({intensity['max_restarts']} restarts in "
                f"{intensity['period_s']} s): it would escalate and stop the whole process; inject at most "
                f"{intensity['max_restarts']} store-writer faults")
        before = await figures_when_caught_up(settings, bus, timeout_s=options.timeout_s)
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
        status1 = await controller_status(endpoint)
        after = await read_figures(settings)
        match, digest_detail = await clean_pass_match(settings, after, options.clean_pass)
    finally:
        await endpoint.aclose()
        await bus.aclose()
    figures: dict[str, Any] = {
        "target": options.target,
        "faults_injected": len(injected_at),
        "actors_targeted": len(targets),
        "intensity": f"{intensity['max_restarts']}/{intensity['period_s']}s",
        "intensity_exceeded": exceeds_intensity(injected_at, intensity["max_restarts"], intensity["period_s"]),
        "restarts": restart_delta(status0, status1),
        "root_restarts": {k: v - status0["supervisors"]["root"]["restarts"].get(k, 0)
                          for k, v in status1["supervisors"]["root"]["restarts"].items()
                          if v - status0["supervisors"]["root"]["restarts"].get(k, 0)},
        "escalations": escalation_delta(status0, status1),
        "events_sent": sent,
        "applied": after.delta(before, "applied"),
        "duplicates": after.delta(before, "duplicate"),
        "anomalies": sum(unexplained_ledger(after.ledger_delta(before)).values()),
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
    return checks + digest_check(figures["digest_match"], digest_detail)
