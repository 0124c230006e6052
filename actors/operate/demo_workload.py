"""A synthetic but valid workload: context and traffic envelopes for N flows, plus what to expect.

Every envelope is canonical (docs/events.md §The envelope): no extra top-level keys, ``ts_utc`` with exactly
six fractional digits, hex64 fingerprints, hex32 run ids, full ContextPins including ``run_id``.
Output is a pure function of the arguments (``seed`` drives amounts and currencies and is part of
the pins), so tests and the demo script can compare runs exactly.

Per flow ``i`` (1..N), all at ``start + i`` seconds (traffic 100/200 ms later):

- ``arrival_events_5B`` on the arrival-events topic (not for *incomplete* flows);
- ``s1_arrival_entities_6B`` on the arrival-entities topic;
- a flow anchor: ``s3_flow_anchor_with_fraud_6B`` for every 5th flow, else
  ``s2_flow_anchor_baseline_6B``, binding ``flow-<i>`` to the join key ``(m-<(i%7)+1>, i)``;
- two traffic events (``AUTH_REQUEST``, ``AUTH_RESPONSE``) on the fraud or baseline traffic topic.

Entity ids repeat across flows (instrument ``inst-<i%13>``, account ``acct-<i%17>``, device
``dev-<i%11>``, ip ``ip-<i%19>``) so that entity-velocity features see several events per key.

Anomalies, so the demo shows every answer kind: the last ``incomplete`` flows have no arrival event
(their frames are incomplete: ``MISSING_JOIN_FRAME`` / ``JOIN_FRAME_INCOMPLETE``); the ``conflicts``
flows just before them get a second anchor with flow id ``flow-<i>-dup`` on the same join key
(``CONFLICT`` / ``FLOW_BINDING_CONFLICT``, and the frame's anchor role is in conflict too).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final

import anyio

from ctxplane.runtime.bus import FileBus, partition_key_for

__all__ = (
    "DEMO_TOPICS",
    "TOPIC_ANCHOR_BASELINE",
    "TOPIC_ANCHOR_FRAUD",
    "TOPIC_ARRIVAL_ENTITIES",
    "TOPIC_ARRIVAL_EVENTS",
    "TOPIC_TRAFFIC_BASELINE",
    "TOPIC_TRAFFIC_FRAUD",
    "DemoExpectations",
    "demo_expectations",
    "demo_pins",
    "generate",
    "write_demo_bus",
    "write_demo_bus_async",
)

TOPIC_ARRIVAL_EVENTS: Final = "fp.bus.context.arrival_events.v1"
TOPIC_ARRIVAL_ENTITIES: Final = "fp.bus.context.arrival_entities.v1"
TOPIC_ANCHOR_FRAUD: Final = "fp.bus.context.flow_anchor.fraud.v1"
TOPIC_ANCHOR_BASELINE: Final = "fp.bus.context.flow_anchor.baseline.v1"
TOPIC_TRAFFIC_FRAUD: Final = "fp.bus.traffic.fraud.v1"
TOPIC_TRAFFIC_BASELINE: Final = "fp.bus.traffic.baseline.v1"
#: Every topic :func:`generate` fills, context topics first.
DEMO_TOPICS: Final = (
    TOPIC_ARRIVAL_EVENTS,
    TOPIC_ARRIVAL_ENTITIES,
    TOPIC_ANCHOR_FRAUD,
    TOPIC_ANCHOR_BASELINE,
    TOPIC_TRAFFIC_FRAUD,
    TOPIC_TRAFFIC_BASELINE,
)

_DEFAULT_RUN: Final = "platform_20260207T000000Z"
_DEFAULT_START: Final = "2026-02-07T05:00:00.000000Z"
_TS_FORMAT: Final = "%Y-%m-%dT%H:%M:%S.%fZ"
_PRODUCER: Final = "ctxplane.demo"
_SCHEMA_VERSION: Final = "v1"
_SCENARIO_ID: Final = "demo_scenario"
_FRAUD_EVERY: Final = 5  # every 5th flow is a fraud flow
_CURRENCIES: Final = ("EUR", "GBP", "USD")


def _hex(text: str, length: int = 64) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def demo_pins(seed: int = 7, platform_run_id: str = _DEFAULT_RUN) -> dict[str, Any]:
    """The ContextPins (with ``run_id``) every demo envelope carries; derived from the arguments."""
    return {
        "platform_run_id": platform_run_id,
        "scenario_run_id": _hex(f"ctxplane.demo:scenario_run:{platform_run_id}:{seed}", 32),
        "manifest_fingerprint": _hex(f"ctxplane.demo:manifest:{seed}"),
        "parameter_hash": _hex(f"ctxplane.demo:parameters:{seed}"),
        "scenario_id": _SCENARIO_ID,
        "seed": seed,
        "run_id": _hex(f"ctxplane.demo:run:{platform_run_id}:{seed}", 32),
    }


@dataclass(frozen=True, slots=True)
class _Plan:
    """Which flows are normal, incomplete or in conflict (see the module docstring)."""

    flows: int
    incomplete: frozenset[int]
    conflicts: frozenset[int]


def _plan(flows: int, conflicts: int, incomplete: int) -> _Plan:
    if flows < 1:
        raise ValueError(f"flows must be >= 1, got {flows}")
    if conflicts < 0 or incomplete < 0:
        raise ValueError(f"conflicts and incomplete must be >= 0, got {conflicts} and {incomplete}")
    if conflicts + incomplete > flows:
        raise ValueError(
            f"conflicts + incomplete ({conflicts} + {incomplete}) must not exceed flows ({flows})"
        )
    # Anomalies sit at the end, so flows 1..N-conflicts-incomplete are a READY prefix.
    first_incomplete = flows - incomplete + 1
    first_conflict = first_incomplete - conflicts
    return _Plan(
        flows,
        frozenset(range(first_incomplete, flows + 1)),
        frozenset(range(first_conflict, first_incomplete)),
    )


@dataclass(frozen=True, slots=True)
class DemoExpectations:
    """What a correct ctxplane answers after applying :func:`generate`'s output.

    Attributes:
        pins: The ContextPins to query with.
        ready: Flow ids whose ``resolve_flow_binding`` is ``READY``.
        missing_join_frame: Anchored flows without an arrival event: ``MISSING_JOIN_FRAME`` /
            ``JOIN_FRAME_INCOMPLETE``.
        conflict: Flow ids answered ``CONFLICT`` (``FLOW_BINDING_CONFLICT``): each conflicting
            flow and its ``-dup`` twin.
        missing_binding: A flow id that was never anchored: ``MISSING_BINDING``.
        fraud: Flow ids routed to the fraud topics.
        counts: Envelopes per topic.
    """

    pins: Mapping[str, Any]
    ready: tuple[str, ...]
    missing_join_frame: tuple[str, ...]
    conflict: tuple[str, ...]
    missing_binding: tuple[str, ...]
    fraud: tuple[str, ...]
    counts: Mapping[str, int]


def demo_expectations(
    flows: int,
    *,
    seed: int = 7,
    platform_run_id: str = _DEFAULT_RUN,
    conflicts: int = 1,
    incomplete: int = 2,
) -> DemoExpectations:
    """The answers :func:`generate` with the same arguments should produce (see
    :class:`DemoExpectations`).

    Raises:
        ValueError: as :func:`generate`.
    """
    plan = _plan(flows, conflicts, incomplete)
    every = range(1, flows + 1)
    fraud_flows = [i for i in every if i % _FRAUD_EVERY == 0]
    anchors_fraud = len(fraud_flows) + sum(1 for i in plan.conflicts if i % _FRAUD_EVERY == 0)
    anchors_total = flows + len(plan.conflicts)
    return DemoExpectations(
        pins=demo_pins(seed, platform_run_id),
        ready=tuple(
            f"flow-{i}" for i in every if i not in plan.incomplete and i not in plan.conflicts
        ),
        missing_join_frame=tuple(f"flow-{i}" for i in sorted(plan.incomplete)),
        conflict=tuple(
            flow for i in sorted(plan.conflicts) for flow in (f"flow-{i}", f"flow-{i}-dup")
        ),
        missing_binding=(f"flow-{flows + 1}",),
        fraud=tuple(f"flow-{i}" for i in fraud_flows),
        counts={
            TOPIC_ARRIVAL_EVENTS: flows - len(plan.incomplete),
            TOPIC_ARRIVAL_ENTITIES: flows,
            TOPIC_ANCHOR_FRAUD: anchors_fraud,
            TOPIC_ANCHOR_BASELINE: anchors_total - anchors_fraud,
            TOPIC_TRAFFIC_FRAUD: 2 * len(fraud_flows),
            TOPIC_TRAFFIC_BASELINE: 2 * (flows - len(fraud_flows)),
        },
    )


def generate(
    flows: int,
    *,
    seed: int = 7,
    platform_run_id: str = _DEFAULT_RUN,
    conflicts: int = 1,
    incomplete: int = 2,
    start: str = _DEFAULT_START,
) -> dict[str, list[dict[str, Any]]]:
    """Build the demo workload: topic → envelopes in timestamp order (every topic of
    :data:`DEMO_TOPICS` is present, possibly empty). Deterministic for equal arguments.

    Raises:
        ValueError: ``flows < 1``, a negative count, ``conflicts + incomplete > flows``, or a
            ``start`` not in the ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` form.
    """
    plan = _plan(flows, conflicts, incomplete)
    try:
        base = datetime.strptime(start, _TS_FORMAT)
    except ValueError:
        raise ValueError(f"start must look like {_DEFAULT_START}, got {start!r}") from None
    pins = demo_pins(seed, platform_run_id)
    rng = random.Random(seed)
    out: dict[str, list[dict[str, Any]]] = {topic: [] for topic in DEMO_TOPICS}

    def emit(
        topic: str, event_type: str, i: int, role: str, at: datetime, payload: dict[str, Any]
    ) -> None:
        ts = at.strftime(_TS_FORMAT)
        out[topic].append(
            {
                "event_id": _hex(f"ctxplane.demo:{platform_run_id}:{seed}:{topic}:{i}:{role}"),
                "event_type": event_type,
                "ts_utc": ts,
                "manifest_fingerprint": pins["manifest_fingerprint"],
                "parameter_hash": pins["parameter_hash"],
                "seed": pins["seed"],
                "scenario_id": pins["scenario_id"],
                "run_id": pins["run_id"],
                "platform_run_id": pins["platform_run_id"],
                "scenario_run_id": pins["scenario_run_id"],
                "emitted_at_utc": ts,
                "schema_version": _SCHEMA_VERSION,
                "producer": _PRODUCER,
                "payload": payload,
            }
        )

    for i in range(1, flows + 1):
        at = base + timedelta(seconds=i)
        fraud = i % _FRAUD_EVERY == 0
        merchant = f"m-{(i % 7) + 1}"
        amount_minor = rng.randint(100, 250_000)
        currency = rng.choice(_CURRENCIES)
        amount = amount_minor / 100
        entities = {
            "party_id": f"party-{i}",
            "account_id": f"acct-{i % 17}",
            "instrument_id": f"inst-{i % 13}",
            "device_id": f"dev-{i % 11}",
            "ip_id": f"ip-{i % 19}",
        }
        if i not in plan.incomplete:
            emit(
                TOPIC_ARRIVAL_EVENTS,
                "arrival_events_5B",
                i,
                "arrival",
                at,
                {
                    "merchant_id": merchant,
                    "arrival_seq": i,
                    "amount_minor": amount_minor,
                    "currency": currency,
                    "site_id": f"site-{i % 3}",
                },
            )
        emit(
            TOPIC_ARRIVAL_ENTITIES,
            "s1_arrival_entities_6B",
            i,
            "entities",
            at,
            {"merchant_id": merchant, "arrival_seq": i, **entities},
        )
        anchor_topic, anchor_type = (
            (TOPIC_ANCHOR_FRAUD, "s3_flow_anchor_with_fraud_6B")
            if fraud
            else (TOPIC_ANCHOR_BASELINE, "s2_flow_anchor_baseline_6B")
        )
        anchor = {
            "merchant_id": merchant,
            "arrival_seq": i,
            "flow_id": f"flow-{i}",
            **entities,
            "amount": amount,
        }
        emit(anchor_topic, anchor_type, i, "anchor", at, anchor)
        traffic_topic, traffic_type = (
            (TOPIC_TRAFFIC_FRAUD, "s3_event_stream_with_fraud_6B")
            if fraud
            else (TOPIC_TRAFFIC_BASELINE, "s2_event_stream_baseline_6B")
        )
        for event_seq, kind in enumerate(("AUTH_REQUEST", "AUTH_RESPONSE")):
            emit(
                traffic_topic,
                traffic_type,
                i,
                f"traffic-{event_seq}",
                at + timedelta(milliseconds=100 * (event_seq + 1)),
                {
                    "flow_id": f"flow-{i}",
                    "event_seq": event_seq,
                    "event_kind": kind,
                    "amount": amount,
                    "merchant_id": merchant,
                    "instrument_id": entities["instrument_id"],
                    "account_id": entities["account_id"],
                    "device_id": entities["device_id"],
                    "ip_id": entities["ip_id"],
                },
            )
        if i in plan.conflicts:
            # A second anchor claiming the same join key for another flow id.
            emit(
                anchor_topic,
                anchor_type,
                i,
                "anchor-dup",
                at + timedelta(milliseconds=500),
                {**anchor, "flow_id": f"flow-{i}-dup"},
            )
    return out


async def write_demo_bus_async(
    root: Path,
    flows: int,
    partitions: int = 2,
    *,
    seed: int = 7,
    platform_run_id: str = _DEFAULT_RUN,
    conflicts: int = 1,
    incomplete: int = 2,
    start: str = _DEFAULT_START,
) -> dict[str, int]:
    """Publish :func:`generate`'s output to a file bus at ``root``: every demo topic is created with
    ``partitions`` partitions, and each topic's envelopes go out in one ``publish_many`` (one fsync
    per partition file), routed by merchant id. Returns the number of envelopes per topic.

    Running it twice on the same root appends the same events again (intake deduplicates them).

    Raises:
        ValueError: as :func:`generate`, or ``partitions < 1``.
        BusError: a demo topic exists under ``root`` with another partition count.
    """
    workload = generate(
        flows,
        seed=seed,
        platform_run_id=platform_run_id,
        conflicts=conflicts,
        incomplete=incomplete,
        start=start,
    )
    async with FileBus(root) as bus:
        for topic, envelopes in workload.items():
            await bus.create_topic(topic, partitions)
            await bus.publish_many(topic, [(partition_key_for(e), e) for e in envelopes])
    return {topic: len(envelopes) for topic, envelopes in workload.items()}


def write_demo_bus(
    root: Path,
    flows: int,
    partitions: int = 2,
    *,
    seed: int = 7,
    platform_run_id: str = _DEFAULT_RUN,
    conflicts: int = 1,
    incomplete: int = 2,
    start: str = _DEFAULT_START,
) -> dict[str, int]:
    """Synchronous :func:`write_demo_bus_async` (runs its own event loop, so it must not be called
    from async code — await :func:`write_demo_bus_async` there)."""

    async def run() -> dict[str, int]:
        return await write_demo_bus_async(
            root,
            flows,
            partitions,
            seed=seed,
            platform_run_id=platform_run_id,
            conflicts=conflicts,
            incomplete=incomplete,
            start=start,
        )

    return anyio.run(run)
