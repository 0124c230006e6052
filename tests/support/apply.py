"""Drive the apply program directly (no actors): fast, deterministic store-level tests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from ctxplane.actors.ingest.apply import apply_program
from ctxplane.actors.operate.digest import ledger_digest_program, state_digest_program
from ctxplane.actors.tables.features import FeatureWriter
from ctxplane.config.settings import CONTEXT_TOPICS, TRAFFIC_TOPICS
from ctxplane.contracts.classes import Plane
from ctxplane.contracts.intake import IntakeRules, SourceRef, Verdict
from ctxplane.contracts.messages import ApplyBatch
from ctxplane.runtime.store import StoreBackend

JOIN_RULES = IntakeRules(Plane.JOIN, frozenset(CONTEXT_TOPICS))


def verdicts(topic: str, partition: int, start: int, envelopes: Sequence[dict[str, Any] | bytes],
             rules: IntakeRules = JOIN_RULES) -> list[Verdict]:
    out = []
    for i, env in enumerate(envelopes):
        raw = env if isinstance(env, bytes) else orjson.dumps({"partition_key": "k", "payload": env, "published_at_utc": "x"})
        out.append(rules.classify(SourceRef(topic, partition, str(start + i), "file_line"), raw))
    return out


def batch(topic: str, partition: int, start: int, envelopes: Sequence[dict[str, Any] | bytes], *, seq: int = 0,
          rules: IntakeRules = JOIN_RULES, plane: Plane = Plane.JOIN) -> ApplyBatch:
    vs = verdicts(topic, partition, start, envelopes, rules)
    watermark = max((v.ts_us for v in vs if hasattr(v, "ts_us")), default=None)
    return ApplyBatch(plane=plane, scope="*", topic=topic, partition=partition, offset_kind="file_line",
                      verdicts=tuple(vs), next_offset=str(start + len(envelopes)), watermark_us=watermark, seq=seq,
                      reply_to=None)


async def apply(store: StoreBackend, batches: Sequence[ApplyBatch], features: FeatureWriter | None = None) -> Any:
    return await store.write(apply_program(list(batches), recorded_at="2026-01-01T00:00:00.000000Z", features=features))


async def state_digest(store: StoreBackend) -> str:
    return await store.read(state_digest_program())


async def ledger_digest(store: StoreBackend) -> str:
    return await store.read(ledger_digest_program())


_ = TRAFFIC_TOPICS
