"""A record the store refuses is isolated: its group commits without it and it is ledgered, on every backend.

Intake refuses out-of-range values first (tests/contracts/test_intake.py), so these tests build the
refused record by hand: a valid verdict whose ``arrival_seq`` is 2**63, which neither backend's
BIGINT column holds (SQLite raises OverflowError, PostgreSQL DataError).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Sequence
from typing import Any

import anyio
import pytest

from ctxplane.actors.ingest.apply import apply_program
from ctxplane.actors.ingest.isolate import cut, write_isolating
from ctxplane.actors.ingest.store_writer import StoreWriter, StoreWriterConfig
from ctxplane.config.settings import StoreSettings
from ctxplane.contracts.intake import Accepted
from ctxplane.contracts.messages import Applied, ApplyBatch
from ctxplane.runtime.exceptions import StoreDataError
from ctxplane.runtime.kernel import Registry
from ctxplane.runtime.kernel.actor import serve_actor
from ctxplane.runtime.store import Execute, Fetch, Program, StoreBackend, open_store
from tests.support.apply import batch
from tests.support.workload import ANCHOR_FRAUD, ARRIVAL, ENTITIES, context_events

RECORDED_AT = "2026-01-01T00:00:00.000000Z"


@pytest.fixture
async def store(store_dsn: str) -> AsyncIterator[StoreBackend]:
    opened = await open_store(StoreSettings(dsn=store_dsn))
    try:
        await opened.migrate()
        yield opened
    finally:
        await opened.aclose()


def _group(arrivals: int) -> list[ApplyBatch]:
    """One batch per context topic (partition 0) for ``arrivals`` arrivals."""
    by_topic: dict[str, list[dict[str, Any]]] = {}
    for topic, env in (item for seq in range(1, arrivals + 1) for item in context_events(seq)):
        by_topic.setdefault(topic, []).append(env)
    return [batch(topic, 0, 0, envs, seq=i) for i, (topic, envs) in enumerate(sorted(by_topic.items()))]


def _poison(group: list[ApplyBatch], topic: str, index: int) -> tuple[list[ApplyBatch], Accepted]:
    """``group`` with verdict ``index`` of ``topic``'s batch given an arrival_seq no store holds."""
    out, bad = [], None
    for b in group:
        if b.topic == topic:
            verdicts = list(b.verdicts)
            original = verdicts[index]
            assert isinstance(original, Accepted)
            bad = verdicts[index] = dataclasses.replace(original, arrival_seq=2**63)
            b = dataclasses.replace(b, verdicts=tuple(verdicts))
        out.append(b)
    assert bad is not None
    return out, bad


def _build(batches: Sequence[ApplyBatch]) -> Program[Any]:
    return apply_program(batches, recorded_at=RECORDED_AT)


async def _rows(store: StoreBackend, sql: str) -> list[tuple[Any, ...]]:
    def program() -> Program[list[tuple[Any, ...]]]:
        rows = yield Fetch(sql)
        return [tuple(row) for row in rows]

    return await store.read(program())


async def test_a_group_with_one_refused_record_commits_the_others_and_ledgers_that_one(
    store: StoreBackend,
) -> None:
    group, bad = _poison(_group(5), ARRIVAL[0], 2)
    with pytest.raises(StoreDataError):  # as one transaction, the group fails on every retry
        await store.write(_build(group))

    outcome, committed = await write_isolating(store, _build, group)

    assert (outcome.counts["applied"], outcome.counts["rejected"]) == (14, 1)
    ledger = await _rows(store, "SELECT reason_code, event_id, topic, source_offset, details_json FROM apply_failures")
    assert [row[:4] for row in ledger] == [("STORE_REJECTED", bad.event_id, ARRIVAL[0], "2")]
    assert "refused a value" in str(ledger[0][4])  # the store's own message is kept in the details
    assert await _rows(store, "SELECT count(*) FROM join_frame_roles") == [(14,)]
    assert await _rows(store, "SELECT count(*) FROM intake_dedupe WHERE event_id = '%s'" % bad.event_id) == [(0,)]
    # Every partition's checkpoint moved past its whole batch, the refused record included.
    assert sorted(await _rows(store, "SELECT topic, next_offset FROM checkpoints")) == sorted(
        (b.topic, b.next_offset) for b in group)
    assert [len(b.verdicts) for b in committed] == [len(b.verdicts) for b in group]

    # Re-delivered (a restart before the checkpoint was seen): isolated again, ledgered once.
    await write_isolating(store, _build, group)
    assert len(await _rows(store, "SELECT failure_id FROM apply_failures")) == 1


async def test_several_refused_records_in_several_batches_are_each_isolated(store: StoreBackend) -> None:
    group, first = _poison(_group(6), ENTITIES[0], 0)
    group, second = _poison(group, ANCHOR_FRAUD[0], 5)

    outcome, _ = await write_isolating(store, _build, group)

    assert (outcome.counts["applied"], outcome.counts["rejected"]) == (16, 2)
    assert sorted(await _rows(store, "SELECT event_id FROM apply_failures WHERE reason_code = 'STORE_REJECTED'")) == sorted(
        [(first.event_id,), (second.event_id,)])
    assert await _rows(store, "SELECT count(*) FROM flow_binding_claims") == [(5,)]


async def test_a_failure_that_is_not_about_a_record_is_raised_and_nothing_is_written(
    store: StoreBackend,
) -> None:
    def broken(batches: Sequence[ApplyBatch]) -> Program[Any]:
        outcome = yield from _build(batches)
        yield Execute("INSERT INTO intake_counters (scope, topic, partition_id, name, value) VALUES ('*', 't', 0, 'n', ?)",
                      (2**63,))
        return outcome

    with pytest.raises(StoreDataError):
        await write_isolating(store, broken, _group(2))
    assert await _rows(store, "SELECT count(*) FROM join_frame_roles") == [(0,)]
    assert await _rows(store, "SELECT count(*) FROM apply_failures") == [(0,)]


def test_cut_keeps_the_first_verdicts_in_group_order_and_every_batch() -> None:
    group = _group(2)  # three batches of two verdicts
    assert [len(b.verdicts) for b in cut(group, 3)] == [2, 1, 0]
    assert [len(b.verdicts) for b in cut(group, 0)] == [0, 0, 0]
    assert cut(group, 6) == group
    assert [b.next_offset for b in cut(group, 1)] == [b.next_offset for b in group]


class _Inbox:
    """Stands in for a partition actor's ref: records what the store-writer tells it."""

    def __init__(self) -> None:
        self.messages: list[object] = []
        self.arrived = anyio.Event()

    async def tell(self, message: object) -> None:
        self.messages.append(message)
        self.arrived.set()


async def test_the_store_writer_acknowledges_a_batch_whose_record_the_store_refused(store_dsn: str) -> None:
    inbox = _Inbox()
    [poisoned], bad = _poison([b for b in _group(3) if b.topic == ARRIVAL[0]], ARRIVAL[0], 1)
    poisoned = dataclasses.replace(poisoned, reply_to=inbox)
    registry = Registry()
    writer = StoreWriter(StoreWriterConfig(group_commit_max_records=1000),
                         open_store=lambda: _migrated(store_dsn), subscribers=())
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            await tg.start(lambda task_status: serve_actor(
                writer, name="store-writer", registry=registry, mailbox_capacity=8, task_status=task_status))
            await registry.ref("store-writer").tell(poisoned)
            await inbox.arrived.wait()
            tg.cancel_scope.cancel()
    assert inbox.messages == [Applied(poisoned.topic, poisoned.partition, poisoned.seq, poisoned.next_offset)]
    store = await _migrated(store_dsn)
    try:
        assert await _rows(store, "SELECT reason_code, event_id FROM apply_failures") == [("STORE_REJECTED", bad.event_id)]
        assert await _rows(store, "SELECT count(*) FROM join_frame_roles") == [(2,)]
    finally:
        await store.aclose()


async def _migrated(dsn: str) -> StoreBackend:
    opened = await open_store(StoreSettings(dsn=dsn))
    await opened.migrate()
    return opened
