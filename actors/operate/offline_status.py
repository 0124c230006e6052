"""``ctxplane status --offline``: positions, lag and the ledger from the store and the bus alone.

What a Kafka operator gets from ``kafka-consumer-groups --describe`` with the group stopped: per
consumed partition the committed checkpoint, the bus's end and the lag, read without asking (or
needing) a running process. Health is not evaluated: its signals (query answers, mailboxes,
restarts) live in the process. What the bus cannot say is ``null``, never a guess:

- file bus: ``end`` is the partition's count of complete lines and ``lag`` the lines after the
  checkpoint (without one: after where a reader starts, ``bus.start_position``);
- Kinesis: no call answers a shard's newest sequence number, so ``end`` and ``lag`` are unknown;
  one GetRecords after the checkpoint says whether a record follows (``unread``) and how far behind
  the tip it is (``behind_ms``, Kinesis' ``MillisBehindLatest``). A drained closed shard has lag 0.

The store's part is read in one snapshot: checkpoints, ledger counts per reason, intake counters,
live partition leases and the newest audited checkpoint moves.
"""

from __future__ import annotations

import time
from typing import Any

import structlog

from ctxplane.actors.operate.checkpoint_audit import recent_moves_program
from ctxplane.actors.operate.exclusive import running_process
from ctxplane.actors.resources import open_bus, open_current_store, scope_of
from ctxplane.actors.tables.checkpoints import checkpoint_details_program
from ctxplane.actors.tables.dedupe import counter_totals_program
from ctxplane.actors.tables.leases import live_owners_program
from ctxplane.actors.tables.ledger import reason_summary_program
from ctxplane.config.settings import Settings
from ctxplane.contracts.timestamps import now_utc, parse_instant_us
from ctxplane.runtime.bus import EventBus
from ctxplane.runtime.exceptions import BusError
from ctxplane.runtime.store import Program

__all__ = ("offline_status", "store_view_program")

log = structlog.get_logger("ctxplane.status")

_RECENT_MOVES = 5


def store_view_program(scope: str) -> Program[dict[str, Any]]:
    """Everything ``status --offline`` reads from the store, in one snapshot."""
    checkpoints = yield from checkpoint_details_program(scope)
    reasons = yield from reason_summary_program()
    counters = yield from counter_totals_program(scope)
    leases = yield from live_owners_program(scope)
    moves = yield from recent_moves_program(scope, _RECENT_MOVES)
    return {
        "checkpoints": {(topic, int(p)): (plane, offset, kind, watermark, updated)
                        for topic, p, plane, offset, kind, watermark, updated in checkpoints},
        "ledger": {
            "rows": sum(int(n) for _r, n, _at in reasons),
            "anomaly_counts": {reason: int(n) for reason, n, _at in reasons},
            "last_recorded_at_utc": max((at for _r, _n, at in reasons), default=None),
        },
        "intake_counters": counters,
        "leases": leases,
        "checkpoint_moves": moves,
    }


async def _partition(bus: EventBus, plane: str, topic: str, partition: int, stored: tuple[Any, ...] | None,
                     now: float) -> dict[str, Any]:
    _plane, next_offset, kind, watermark, updated = stored if stored is not None else (plane, None, None, None, None)
    row: dict[str, Any] = {
        "plane": plane, "topic": topic, "partition": partition, "next_offset": next_offset, "offset_kind": kind,
        "end": None, "lag": None, "behind_ms": None, "unread": None, "watermark_ts_utc": watermark,
        "checkpoint_at_utc": updated,
        "last_commit_age_s": round(now - parse_instant_us(updated) / 1e6, 3) if updated else None,
    }
    try:
        backlog = await bus.backlog(topic, partition, next_offset)
    except (BusError, OSError) as exc:
        row["error"] = str(exc)  # one partition the bus cannot answer for does not hide the others
        return row
    row.update(end=backlog.end, lag=backlog.lag, behind_ms=backlog.behind_ms, unread=backlog.unread)
    return row


async def offline_status(settings: Settings) -> dict[str, Any]:
    """The offline status report (see the module docstring); reads only.

    Raises:
        UsageError: the store has no current schema (nothing ran on it yet).
        StoreError: the store cannot be read.
    """
    scope = scope_of(settings)
    process = running_process(settings)
    store = await open_current_store(settings)
    try:
        view = await store.read(store_view_program(scope))
    finally:
        await store.aclose()
    consumed = settings.topics()
    now = time.time()
    partitions = []
    async with open_bus(settings) as bus:
        for topic, plane in sorted(consumed.items()):
            try:
                on_bus = await bus.list_partitions(topic)
            except (BusError, OSError) as exc:
                log.warning("cannot list the topic's partitions", topic=topic, error=str(exc))
                on_bus = []
            known = sorted(set(on_bus) | {p for t, p in view["checkpoints"] if t == topic})
            for partition in known:
                partitions.append(await _partition(bus, plane, topic, partition,
                                                   view["checkpoints"].get((topic, partition)), now))
    lags = [p["lag"] for p in partitions]
    leases = view["leases"]
    if process is None and leases:
        process = f"ctxplane run holds partition leases: {', '.join(sorted(leases))}"
    return {
        "offline": True,
        "checked_at_utc": now_utc(),
        "scope": scope,
        "store": settings.store.backend,
        "bus": settings.bus.kind,
        "process": {"running": process is not None, "detail": process, "leases": leases},
        "partitions": partitions,
        "totals": {
            "partitions": len(partitions),
            "without_checkpoint": sum(1 for p in partitions if p["next_offset"] is None),
            "unread_partitions": sum(1 for p in partitions if p["unread"]),
            # A sum over every partition, or null when the bus cannot count some of them.
            "lag": sum(lags) if all(lag is not None for lag in lags) else None,
        },
        "ledger": view["ledger"],
        "intake_counters": view["intake_counters"],
        "checkpoint_moves": view["checkpoint_moves"],
    }
