"""The ``conflict-storm`` drill (ops/RUNBOOK.md §2): conflicts under load are anomalies, nothing else.

K conflicting anchors and K payload-hash mismatches: every one recorded as an anomaly and nothing
else, CONFLICT answers, throughput within a factor of a clean load, no restart.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ctxplane.actors.drills.kit import (
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
    ANNOTATIONS,
    clean_pass_match,
    controller_status,
    digest_check,
    escalation_delta,
    figures_when_caught_up,
    restart_delta,
    unexplained_ledger,
)
from ctxplane.config.settings import Settings
from ctxplane.contracts.answers import Status
from ctxplane.runtime.bus import EventBus
from ctxplane.runtime.exceptions import CtxplaneError, UsageError

__all__ = ("ConflictStormOptions", "judge_conflict_storm", "run_conflict_storm", "storm_events")


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
        status0 = await controller_status(endpoint, first=True)
        before = await figures_when_caught_up(settings, bus, timeout_s=options.timeout_s)
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
        status1 = await controller_status(endpoint)
        after = await read_figures(settings)
        match, digest_detail = await clean_pass_match(settings, after, options.clean_pass)
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
                         if reason not in ANNOTATIONS and eid not in explained.get(reason, ()))
    recorded = {reason: {eid for eid, r in new_keys if r == reason} for reason in explained}
    figures: dict[str, Any] = {
        "events_sent": len(workload.items) + len(storm),
        "conflicting_anchors": len(anchors),
        "payload_mismatches": len(mismatched),
        "applied": after.delta(before, "applied"),
        "duplicates": after.delta(before, "duplicate"),
        "payload_hash_mismatch_counted": after.delta(before, "payload_hash_mismatch"),
        "anomalies": sum(unexplained_ledger(after.ledger_delta(before)).values()),
        "ledger_delta": after.ledger_delta(before),
        "anchors_recorded": len(recorded["FLOW_BINDING_CONFLICT"] & anchors),
        "mismatches_recorded": len(recorded["INTAKE_PAYLOAD_HASH_MISMATCH"] & mismatched),
        "unexplained_ledger": len(unexplained),
        "conflict_answers": sum(1 for a in answers if (a.response or {}).get("status") == Status.CONFLICT),
        "answers_sampled": len(answers),
        "answer_reasons": reason_counts(answers),
        "clean_events_per_s": round(len(workload.items) / clean_s, 1),
        "storm_events_per_s": round(len(storm) / storm_s, 1),
        "digest_match": match,
        "restarts": restart_delta(status0, status1),
        "escalations": escalation_delta(status0, status1),
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
    return checks + digest_check(figures["digest_match"], digest_detail)
