"""Lease rounds and fencing as store programs, on both backends (no actors, no bus).

Balancing, take-over after expiry, release, monotonic epochs, and the fence in the apply program:
a batch stamped with an epoch the lease row no longer carries rolls its whole transaction back.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest

from ctxplane.actors.ingest.fencing import (
    FENCED,
    LeasedWriter,
    LeaseLost,
    refuse_fenced,
)
from ctxplane.actors.ingest.leases import (
    RoundResult,
    assignment_mode,
    lease_round_program,
    release_program,
)
from ctxplane.actors.tables.leases import db_now_sql, lease_rows_program
from ctxplane.config.settings import Settings, StoreSettings
from ctxplane.contracts.messages import Applied, ApplyBatch, ApplyFailed
from ctxplane.runtime.exceptions import UsageError
from ctxplane.runtime.store import Fetch, StoreBackend, open_store
from tests.support.apply import apply, batch
from tests.support.workload import ARRIVAL, context_events

SCOPE = "*"
PARTS = [("t", p) for p in range(4)]
SECOND = 1_000_000


@pytest.fixture
async def store(store_dsn: str) -> AsyncIterator[StoreBackend]:
    backend = await open_store(StoreSettings(dsn=store_dsn))
    try:
        await backend.migrate()
        yield backend
    finally:
        await backend.aclose()


class Owner:
    """One process's view: what it holds, and its rounds."""

    def __init__(self, store: StoreBackend, name: str, duration_us: int = 60 * SECOND) -> None:
        self.store, self.name, self.duration_us = store, name, duration_us
        self.held: dict[tuple[str, int], int] = {}

    async def round(self, eligible: list[tuple[str, int]] = PARTS) -> RoundResult:
        result = await self.store.write(lease_round_program(
            scope=SCOPE, owner=self.name, eligible=eligible, held=self.held, duration_us=self.duration_us,
            now_sql=db_now_sql(self.store.dialect.name),
        ))
        self.held = dict(result.held)
        return result


async def _rows(store: StoreBackend) -> dict[tuple[str, int], tuple[str, int, str]]:
    return await store.read(lease_rows_program(SCOPE))


async def test_two_owners_balance_by_stealing_one_lease_per_round(store: StoreBackend) -> None:
    a, b = Owner(store, "a"), Owner(store, "b")
    first = await a.round()
    assert first.share == 4 and set(first.held) == set(PARTS) and set(first.held.values()) == {1}
    stolen = await b.round()
    assert stolen.share == 2 and len(stolen.held) == 1 and stolen.stolen is not None
    assert stolen.held[stolen.stolen] == 2  # every ownership change bumps the epoch
    assert len((await b.round()).held) == 2
    lost = await a.round()
    assert len(lost.held) == 2 and len(lost.lost) == 2 and not lost.acquired
    for _ in range(3):  # settled: nobody steals any more
        assert not (await a.round()).acquired and not (await b.round()).acquired
    rows = await _rows(store)
    assert sorted(owner for owner, _e, _x in rows.values()) == ["a", "a", "b", "b"]


async def test_three_owners_over_four_partitions_settle_at_two_one_one(store: StoreBackend) -> None:
    owners = [Owner(store, name) for name in "abc"]
    for _ in range(4):
        for owner in owners:
            await owner.round()
    counts = sorted(len(o.held) for o in owners)
    assert counts == [1, 1, 2]
    before = await _rows(store)
    for owner in owners:
        await owner.round()
    assert {k: v[:2] for k, v in (await _rows(store)).items()} == {k: v[:2] for k, v in before.items()}


async def test_expired_leases_are_taken_over_at_once_and_released_ones_immediately(store: StoreBackend) -> None:
    # Expired the moment it is written: its expiry is its own round's clock reading, and a later
    # round never reads an earlier one. (Not 1 µs: SQLite's clock has millisecond resolution, so two
    # rounds in one millisecond would see that lease as live. Leases run on PostgreSQL only in
    # production, whose clock_timestamp() has microseconds.)
    dead = Owner(store, "dead", duration_us=0)
    await dead.round()
    survivor = Owner(store, "survivor")
    taken = await survivor.round()
    assert set(taken.held) == set(PARTS)  # the dead owner is not live: the share is everything
    assert set(taken.held.values()) == {2}
    released = await store.write(release_program(
        scope=SCOPE, owner="survivor", held=taken.held, now_sql=db_now_sql(store.dialect.name)))
    assert sorted(released) == PARTS
    rows = await _rows(store)
    assert {owner for owner, _e, _x in rows.values()} == {""} and {e for _o, e, _x in rows.values()} == {3}
    newcomer = await Owner(store, "newcomer").round()
    assert set(newcomer.held.values()) == {4}  # epochs only ever grow, across every owner


async def test_only_eligible_partitions_are_leased(store: StoreBackend) -> None:
    result = await Owner(store, "a").round(eligible=PARTS[:2])
    assert set(result.held) == set(PARTS[:2])


def _stamped(b: ApplyBatch, epoch: int, reply_to: Any = None) -> ApplyBatch:
    return dataclasses.replace(b, lease_epoch=epoch, reply_to=reply_to)


async def test_a_batch_under_a_lost_lease_rolls_its_transaction_back(store: StoreBackend) -> None:
    owner = Owner(store, "a")
    await owner.round(eligible=[(ARRIVAL[0], 0), (ARRIVAL[0], 1)])
    epoch = owner.held[(ARRIVAL[0], 0)]
    envs = [env for topic, env in context_events(1) + context_events(2) if topic == ARRIVAL[0]]
    await apply(store, [_stamped(batch(ARRIVAL[0], 0, 0, envs[:1]), epoch)])
    # A thief takes partition 0 (epoch bumped) while our second batch is in flight.
    await store.write(_bump(ARRIVAL[0], 0))
    stale = _stamped(batch(ARRIVAL[0], 0, 1, envs[1:]), epoch)
    fresh = _stamped(batch(ARRIVAL[0], 1, 0, envs[1:]), owner.held[(ARRIVAL[0], 1)])
    with pytest.raises(LeaseLost) as raised:
        await apply(store, [stale, fresh])
    assert raised.value.tenures == {(SCOPE, ARRIVAL[0], 0, epoch)}
    # Nothing of that transaction committed: not the fresh batch's event, not the checkpoint.
    assert await _count(store, "SELECT count(*) FROM intake_dedupe") == 1
    assert await _count(store, "SELECT count(*) FROM checkpoints WHERE partition_id = 1") == 0
    # The store-writer refuses the stale batch and re-runs the rest: it commits.
    replies: list[Any] = []
    kept = await refuse_fenced([_stamped(stale, epoch, _Recorder(replies)), fresh], raised.value)
    assert kept == [fresh]
    assert len(replies) == 1 and type(replies[0]) is ApplyFailed and not replies[0].retryable
    assert replies[0].fenced and replies[0].error.startswith(FENCED)
    await apply(store, kept)
    assert await _count(store, "SELECT count(*) FROM intake_dedupe") == 2
    # Unleased batches (lease_epoch None) are never fenced.
    await apply(store, [batch(ARRIVAL[0], 0, 2, envs[1:])])


async def test_leased_writer_stamps_the_epoch_and_drains_a_fenced_incarnation_quietly() -> None:
    sent: list[Any] = []
    fenced: list[bool] = []
    writer = LeasedWriter(_Recorder(sent), 7, lambda: fenced.append(True))
    replies: list[Any] = []
    for seq in (0, 1, 2):
        await writer.tell(dataclasses.replace(batch(ARRIVAL[0], 0, seq * 10, [], seq=seq), reply_to=_Recorder(replies)))
    assert [b.lease_epoch for b in sent] == [7, 7, 7]
    await sent[0].reply_to.tell(Applied(ARRIVAL[0], 0, 0, "0"))
    assert replies[-1] == Applied(ARRIVAL[0], 0, 0, "0") and not writer.fenced
    # Refused for a lost lease: the assigner is woken once; the actor sees its window drain
    # (an Applied carrying the batch's own next_offset), never a crash-worthy failure.
    await sent[1].reply_to.tell(ApplyFailed(ARRIVAL[0], 0, 1, False, f"{FENCED}: x", fenced=True))
    await sent[2].reply_to.tell(ApplyFailed(ARRIVAL[0], 0, 2, False, f"{FENCED}: x", fenced=True))
    assert fenced == [True] and writer.fenced
    assert replies[1:] == [Applied(ARRIVAL[0], 0, 1, "10"), Applied(ARRIVAL[0], 0, 2, "20")]
    # Other failures pass through untouched.
    await sent[2].reply_to.tell(ApplyFailed(ARRIVAL[0], 0, 3, False, "boom"))
    assert type(replies[-1]) is ApplyFailed
    await writer.tell("status")
    assert sent[-1] == "status"


def test_assignment_mode() -> None:
    pg = {"dsn": "postgresql://u@127.0.0.1:1/db"}

    def mode(**sections: Any) -> str:
        return assignment_mode(Settings.model_validate(sections))

    assert mode() == "static"
    assert mode(bus={"kind": "kinesis"}) == "local"
    assert mode(store=pg, bus={"kind": "kinesis"}) == "leased"
    assert mode(store=pg, leases={"enabled": True}) == "leased"
    with pytest.raises(UsageError, match="^leases.enabled: partition leases need a PostgreSQL store"):
        mode(leases={"enabled": True})


class _Recorder:
    def __init__(self, into: list[Any]) -> None:
        self.into = into

    async def tell(self, message: object) -> None:
        self.into.append(message)


def _bump(topic: str, partition: int) -> Any:
    yield Fetch("UPDATE partition_leases SET owner = 'thief', epoch = epoch + 1 WHERE topic = ? AND partition_id = ?"
                " RETURNING epoch", (topic, partition))


async def _count(store: StoreBackend, sql: str) -> int:
    def program() -> Any:
        rows = yield Fetch(sql)
        return rows[0][0]

    return int(await store.read(program()))
