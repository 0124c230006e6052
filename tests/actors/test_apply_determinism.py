"""Property: any partitioning order, batch size, group-commit grouping and re-delivery ⇒ the same digest."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctxplane.config.settings import StoreSettings
from ctxplane.runtime.store import open_store
from tests.support.apply import apply, batch, state_digest
from tests.support.workload import ANCHOR_BASELINE, context_events, envelope

Item = tuple[str, dict[str, Any]]


def _workload(n: int, conflicts: int) -> list[Item]:
    items = [item for seq in range(1, n + 1) for item in context_events(seq)]
    for c in range(conflicts):
        seq = 1 + c
        items.append((ANCHOR_BASELINE[0], envelope(
            ANCHOR_BASELINE[1], {"merchant_id": f"m-{(seq % 7) + 1}", "arrival_seq": seq, "flow_id": f"dup-{seq}"},
            eid=f"{c:064x}".replace("0", "c", 1))))
    return items


def _partitioned(items: list[Item], partitions: int, rng: random.Random) -> dict[tuple[str, int], list[dict[str, Any]]]:
    out: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for topic, env in items:
        out.setdefault((topic, rng.randrange(partitions)), []).append(env)
    return out


async def _run(tmp: Path, name: str, parts: dict[tuple[str, int], list[dict[str, Any]]], rng: random.Random,
               max_batch: int, redeliver: bool) -> str:
    store = await open_store(StoreSettings(dsn=f"sqlite:///{tmp / name}.sqlite"))
    try:
        await store.migrate()
        # Cut every partition into batches; interleave partitions randomly (offset order kept within one).
        queues = {}
        for (topic, p), envs in parts.items():
            cuts, start = [], 0
            while start < len(envs):
                size = rng.randint(1, max_batch)
                cuts.append(batch(topic, p, start, envs[start:start + size]))
                start += size
            if redeliver and cuts:
                cuts.append(batch(topic, p, 0, envs))  # the bus re-delivers the whole partition
            queues[(topic, p)] = cuts
        while any(queues.values()):
            group = []
            for _ in range(rng.randint(1, 4)):
                live = [k for k, q in queues.items() if q]
                if not live:
                    break
                group.append(queues[rng.choice(live)].pop(0))
            await apply(store, group)
        return await state_digest(store)
    finally:
        await store.aclose()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32), partitions=st.integers(1, 4), max_batch=st.integers(1, 40), redeliver=st.booleans())
async def test_digest_is_independent_of_batching_interleaving_and_redelivery(
    tmp_path: Path, seed: int, partitions: int, max_batch: int, redeliver: bool
) -> None:
    rng = random.Random(seed)
    items = _workload(12, conflicts=2)
    reference = await _run(tmp_path, f"ref-{seed}", {(t, 0): [e for tt, e in items if tt == t] for t, _ in items},
                           random.Random(0), max_batch=10_000, redeliver=False)
    shuffled = _partitioned(items, partitions, rng)
    got = await _run(tmp_path, f"run-{seed}-{partitions}-{max_batch}-{redeliver}", shuffled, rng, max_batch, redeliver)
    assert got == reference


async def test_digest_changes_when_state_changes(tmp_path: Path) -> None:
    items = _workload(5, conflicts=0)
    parts = {(t, 0): [e for tt, e in items if tt == t] for t, _ in items}
    full = await _run(tmp_path, "full", parts, random.Random(1), 10, False)
    fewer = {k: v[:-1] for k, v in parts.items()}
    assert await _run(tmp_path, "fewer", fewer, random.Random(1), 10, False) != full
