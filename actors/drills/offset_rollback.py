"""The ``offset-rollback`` drill (ops/RUNBOOK.md §2): checkpoints rewound in the running process.

Checkpoints are rewound by N in the running process: zero state change, the N re-delivered records
counted (duplicates, or re-rejections for records that were rejected).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from ctxplane.actors.drills.kit import Check, DrillReport, Endpoint, open_drill_bus, read_figures, wait_caught_up
from ctxplane.actors.drills.steps import controller_status, figures_when_caught_up, restart_delta, unexplained_ledger
from ctxplane.config.settings import Settings
from ctxplane.runtime.bus import EventBus
from ctxplane.runtime.exceptions import CtxplaneError

__all__ = ("OffsetRollbackOptions", "judge_offset_rollback", "run_offset_rollback")

_MB = 1024 * 1024


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
        status0 = await controller_status(endpoint, first=True)
        before = await figures_when_caught_up(settings, bus, timeout_s=options.timeout_s)
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
        status1 = await controller_status(endpoint)
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
        "anomalies": sum(unexplained_ledger(after.ledger_delta(before)).values()),
        "digest_match": after.state_digest == before.state_digest,
        "ledger_digest_match": after.ledger_digest == before.ledger_digest,
        "checkpoints_restored": after.checkpoints == before.checkpoints,
        "rewinds_audited": after.rewinds - before.rewinds,
        "time_to_recover_s": round(recovered_at - began, 3) if recovered_s is not None else None,
        "restarts": restart_delta(status0, status1),
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
