"""Staging (``CopyRows``): the same rows staged and applied the same way on both backends.

The apply program writes a group commit as a handful of set-based statements from staged rows
(binary COPY into a TEMP table on PostgreSQL, executemany into one on SQLite). These tests pin the
operation's contract on every backend: exactly the rows given, values (NULL, 64-bit ints, text)
kept as they are, replaced when staged again, empty in every new transaction, gone on rollback,
and a value the store cannot hold refused as StoreDataError; and that a commit's statement count
does not grow with its size.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from ctxplane.actors.ingest.apply import apply_program
from ctxplane.config.settings import StoreSettings
from ctxplane.runtime.exceptions import StoreDataError
from ctxplane.runtime.store import CopyRows, Execute, Fetch, Op, Program, StageTable, StoreBackend, open_store
from tests.runtime.store import meta
from tests.support.apply import batch
from tests.support.workload import context_events

STAGE = StageTable("stage_test", (("k", "TEXT"), ("n", "BIGINT"), ("p", "INTEGER"), ("note", "TEXT")))
ROWS: list[tuple[Any, ...]] = [
    ("a", 2**63 - 1, 0, "plain"),
    ("b", -(2**63), 7, None),
    ("c", None, None, "ünïcødé ✓ and 'quotes'"),
]


class Boom(Exception):
    """Raised by a test program after staging, to roll its transaction back."""


@pytest.fixture
async def store(store_dsn: str) -> AsyncIterator[StoreBackend]:
    opened = await open_store(StoreSettings(dsn=store_dsn))
    try:
        await opened.migrate()
        yield opened
    finally:
        await opened.aclose()


def _staged() -> Program[list[tuple[Any, ...]]]:
    rows = yield Fetch("SELECT k, n, p, note FROM stage_test")
    return sorted((tuple(row) for row in rows), key=lambda row: row[0])


def stage_and_read(rows: list[tuple[Any, ...]]) -> Program[list[tuple[Any, ...]]]:
    yield CopyRows(STAGE, rows)
    return (yield from _staged())


def read_after_staging_nothing() -> Program[list[tuple[Any, ...]]]:
    """A new transaction: stage no rows (creates the table if needed) and read what it holds."""
    yield CopyRows(STAGE, [])
    return (yield from _staged())


async def test_staged_rows_are_exactly_the_rows_given(store: StoreBackend) -> None:
    assert await store.write(stage_and_read(ROWS)) == ROWS


async def test_staged_rows_feed_a_set_based_write(store: StoreBackend) -> None:
    def program() -> Program[None]:
        yield CopyRows(STAGE, ROWS)
        yield Execute("INSERT INTO store_meta (meta_key, meta_value) SELECT k, COALESCE(note, 'none') FROM stage_test"
                      " WHERE true ON CONFLICT (meta_key) DO UPDATE SET meta_value = excluded.meta_value")

    await store.write(program())
    await store.write(program())  # again: the same rows, the same upsert, the same state
    assert await store.read(meta()) == [("a", "plain"), ("b", "none"), ("c", ROWS[2][3])]


async def test_staging_again_replaces_and_a_new_transaction_starts_empty(store: StoreBackend) -> None:
    def twice() -> Program[list[tuple[Any, ...]]]:
        yield CopyRows(STAGE, ROWS)
        return (yield from stage_and_read(ROWS[1:2]))

    assert await store.write(twice()) == ROWS[1:2]
    assert await store.write(read_after_staging_nothing()) == []
    assert await store.write(stage_and_read(ROWS)) == ROWS  # and it still stages after that


async def test_a_rolled_back_transaction_leaves_nothing_staged_and_staging_works_after(store: StoreBackend) -> None:
    # Run first on a fresh store, so the rolled-back transaction is the one that created the table.
    def failing() -> Program[None]:
        yield CopyRows(STAGE, ROWS)
        raise Boom

    for _ in range(2):
        with pytest.raises(Boom):
            await store.write(failing())
        assert await store.write(read_after_staging_nothing()) == []
    assert await store.write(stage_and_read(ROWS[:1])) == ROWS[:1]


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1])
async def test_a_value_the_store_cannot_hold_is_a_store_data_error(store: StoreBackend, value: int) -> None:
    with pytest.raises(StoreDataError, match="refused a value"):
        await store.write(stage_and_read([("ok", 1, 1, None), ("bad", value, 1, None)]))
    assert await store.write(stage_and_read(ROWS)) == ROWS  # the connection is fine afterwards


def _counted(program: Program[Any], ops: list[str]) -> Program[Any]:
    op: Op = next(program)
    while True:
        ops.append(type(op).__name__)
        result = yield op
        try:
            op = program.send(result)
        except StopIteration as stop:
            return stop.value


async def test_a_group_commit_runs_the_same_statements_whatever_its_size(store: StoreBackend) -> None:
    def group(first: int, flows: int) -> list[Any]:
        by_topic: dict[str, list[dict[str, Any]]] = {}
        for topic, env in (item for seq in range(first, first + flows) for item in context_events(seq)):
            by_topic.setdefault(topic, []).append(env)
        return [batch(topic, 0, first, envs, seq=i) for i, (topic, envs) in enumerate(sorted(by_topic.items()))]

    small: list[str] = []
    large: list[str] = []
    await store.write(_counted(apply_program(group(1, 2), recorded_at="2026-01-01T00:00:00.000000Z"), small))
    await store.write(_counted(apply_program(group(100, 500), recorded_at="2026-01-01T00:00:00.000000Z"), large))
    assert small == large
    assert large.count("CopyRows") == 1 and len(large) < 16
