"""The store contract, run against every backend (SQLite and PostgreSQL) with the same tests.

Each test gets an empty store of one backend through the ``store_dsn`` fixture; PostgreSQL cases
skip when no server was started (``make test`` starts one and makes them mandatory).
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from ctxplane.actors.tables.keyed import fetch_by_keys
from ctxplane.actors.tables.reads import checkpoints_program, join_snapshot_program
from ctxplane.config.settings import StoreSettings
from ctxplane.contracts.join import JoinRequest
from ctxplane.runtime.exceptions import StoreDataError, StoreError, StoreUnavailable
from ctxplane.runtime.store import (
    MIGRATIONS,
    ExecMany,
    Execute,
    Fetch,
    Program,
    StoreBackend,
    open_store,
)
from tests.runtime.store import meta, put
from tests.support.apply import apply, batch, ledger_digest, state_digest
from tests.support.workload import (
    ANCHOR_BASELINE,
    ARRIVAL,
    PINS,
    RUN,
    SCENARIO_RUN,
    context_events,
    envelope,
)

LATEST = MIGRATIONS[-1].version


@pytest.fixture
async def store(store_dsn: str) -> AsyncIterator[StoreBackend]:
    opened = await open_store(StoreSettings(dsn=store_dsn))
    try:
        yield opened
    finally:
        await opened.aclose()


@pytest.fixture
async def migrated(store: StoreBackend) -> StoreBackend:
    await store.migrate()
    return store


class Boom(Exception):
    """Raised by a test program on purpose."""


def versions() -> Program[list[tuple[Any, ...]]]:
    rows: list[tuple[Any, ...]] = yield Fetch("SELECT version, name, checksum FROM schema_migrations ORDER BY version")
    return rows


# -- migrations ---------------------------------------------------------------------------------


async def test_migrate_from_empty_applies_and_records_every_version(store: StoreBackend) -> None:
    assert (await store.schema_status()).current == 0

    assert await store.migrate() == [m.version for m in MIGRATIONS]

    assert await store.read(versions()) == [(m.version, m.name, m.checksum) for m in MIGRATIONS]
    status = await store.schema_status()
    assert (status.current, status.latest, status.pending) == (LATEST, LATEST, [])
    assert await store.read(meta()) == []  # the schema's tables exist and are empty


async def test_migrate_again_is_a_no_op(migrated: StoreBackend) -> None:
    assert await migrated.migrate() == []
    assert await migrated.ensure_schema(auto_migrate=False) == []
    assert await migrated.read(versions()) == [(m.version, m.name, m.checksum) for m in MIGRATIONS]


async def test_pending_migrations_are_refused_without_auto_migrate(store: StoreBackend) -> None:
    with pytest.raises(StoreError, match=r"unapplied migrations \(schema 0, latest \d+\); run `ctxplane migrate"):
        await store.ensure_schema(auto_migrate=False)
    assert (await store.schema_status()).current == 0  # nothing was applied behind the operator's back

    assert await store.ensure_schema(auto_migrate=True) == [m.version for m in MIGRATIONS]


async def test_a_newer_schema_is_refused(migrated: StoreBackend) -> None:
    await migrated.write(_record_version(999))

    for attempt in (migrated.schema_status, migrated.migrate, lambda: migrated.ensure_schema(auto_migrate=True)):
        with pytest.raises(StoreError, match=rf"schema is version 999, newer than this ctxplane knows \({LATEST}\)") as info:
            await attempt()
        assert not isinstance(info.value, StoreUnavailable)  # retrying will not help: upgrade instead
    assert [row[0] for row in await migrated.read(versions())] == [*(m.version for m in MIGRATIONS), 999]


def _record_version(version: int) -> Program[None]:
    yield Execute(
        "INSERT INTO schema_migrations (version, name, checksum, applied_at_utc) VALUES (?, ?, ?, ?)",
        (version, "from_the_future", "0" * 16, "2030-01-01T00:00:00.000000Z"),
    )


# -- transactions -------------------------------------------------------------------------------


async def test_write_commits_what_the_program_wrote(migrated: StoreBackend) -> None:
    def program() -> Program[str]:
        yield from put(("a", "1"))
        yield Execute("UPDATE store_meta SET meta_value = ? WHERE meta_key = ?", ("2", "a"))
        rows = yield Fetch("SELECT meta_value FROM store_meta WHERE meta_key = ?", ("a",))
        return str(rows[0][0])

    assert await migrated.write(program()) == "2"  # a program reads its own writes
    assert await migrated.read(meta()) == [("a", "2")]


async def test_a_program_exception_rolls_back_and_propagates_unchanged(migrated: StoreBackend) -> None:
    def program() -> Program[None]:
        yield from put(("a", "1"))
        yield from put(("b", "2"))
        raise Boom("changed my mind")

    with pytest.raises(Boom, match="changed my mind"):
        await migrated.write(program())
    assert await migrated.read(meta()) == []

    await migrated.write(put(("c", "3")))  # the store is still usable
    assert await migrated.read(meta()) == [("c", "3")]


async def test_a_failing_statement_rolls_back_the_whole_program(migrated: StoreBackend) -> None:
    await migrated.write(put(("a", "1")))

    def program() -> Program[None]:
        yield from put(("b", "2"))
        yield from put(("a", "again"))  # primary-key violation

    with pytest.raises(StoreError) as info:
        await migrated.write(program())
    assert not isinstance(info.value, StoreUnavailable)  # a constraint is not an outage
    assert await migrated.read(meta()) == [("a", "1")]
    await migrated.write(put(("c", "3")))
    assert await migrated.read(meta()) == [("a", "1"), ("c", "3")]


@pytest.mark.parametrize("case", ["int beyond 64 bits", "text with NUL", "bigint overflow in SQL", "primary key"])
async def test_a_value_the_database_refuses_is_a_store_data_error_on_both_backends(migrated: StoreBackend, case: str) -> None:
    # The store-writer isolates records on StoreDataError (deterministic) and retries on
    # StoreUnavailable (transient): the two must never be confused, on either backend.
    await migrated.write(put(("a", "1")))
    ops = {
        "int beyond 64 bits": Execute("INSERT INTO intake_counters (scope, topic, partition_id, name, value)"
                                      " VALUES ('*', 't', 0, 'n', ?)", (2**63,)),
        "text with NUL": Execute("INSERT INTO store_meta (meta_key, meta_value) VALUES (?, 'x')", ("k\x00",)),
        "bigint overflow in SQL": Execute("INSERT INTO intake_counters (scope, topic, partition_id, name, value)"
                                          " VALUES ('*', 't', 0, 'n', CAST(? AS BIGINT) + 1)", (2**63 - 1,)),
        "primary key": Execute("INSERT INTO store_meta (meta_key, meta_value) VALUES ('a', 'again')"),
    }

    def program() -> Program[None]:
        yield from put(("b", "2"))
        yield ops[case]

    if migrated.dialect.name == "sqlite" and case in ("text with NUL", "bigint overflow in SQL"):
        await migrated.write(program())  # SQLite stores NUL and turns an overflowing sum into a REAL
        return
    with pytest.raises(StoreDataError):
        await migrated.write(program())
    assert await migrated.read(meta()) == [("a", "1")]  # rolled back as a whole


async def test_a_read_sees_one_snapshot(store_dsn: str, migrated: StoreBackend) -> None:
    await migrated.write(put(("a", "1")))

    def program() -> Program[tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]]:
        before = yield from meta()
        # Another connection commits while this read transaction is open (between its two queries).
        _commit_in_another_thread(store_dsn, put(("b", "2")))
        after = yield from meta()
        return before, after

    before, after = await migrated.read(program())
    assert before == after == [("a", "1")]
    assert await migrated.read(meta()) == [("a", "1"), ("b", "2")]  # it was committed, just not seen


def _commit_in_another_thread(dsn: str, program: Program[None]) -> None:
    """Commit ``program`` through a second store on its own thread and event loop, and wait.

    Blocking is the point: it runs inside a read program, which must not continue until the
    concurrent commit is done.
    """
    errors: list[BaseException] = []

    async def commit() -> None:
        other = await open_store(StoreSettings(dsn=dsn))
        try:
            await other.write(program)
        finally:
            await other.aclose()

    def target() -> None:
        try:
            anyio.run(commit)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread below
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive(), "the concurrent commit hung"
    if errors:
        raise errors[0]


async def test_a_closed_store_refuses_writes(migrated: StoreBackend) -> None:
    await migrated.aclose()
    with pytest.raises(StoreUnavailable, match="closed"):
        await migrated.write(put(("a", "1")))
    await migrated.aclose()  # idempotent


# -- the application programs -------------------------------------------------------------------


def _context_batches(arrivals: int) -> list[Any]:
    """Join-plane batches (one per topic, partition 0) for ``arrivals`` arrivals, plus a conflicting
    anchor: flow ``dup`` claims the key of arrival 1, which flow ``flow-1`` already claims."""
    items = [item for seq in range(1, arrivals + 1) for item in context_events(seq)]
    items.append((ANCHOR_BASELINE[0], envelope(
        ANCHOR_BASELINE[1], {"merchant_id": "m-2", "arrival_seq": 1, "flow_id": "dup"}, eid="c" * 64)))
    by_topic: dict[str, list[dict[str, Any]]] = {}
    for topic, env in items:
        by_topic.setdefault(topic, []).append(env)
    return [batch(topic, 0, 0, envs) for topic, envs in by_topic.items()]


async def test_apply_gives_the_same_digests_as_the_sqlite_reference(migrated: StoreBackend, tmp_path: Path) -> None:
    batches = _context_batches(40)
    # The reference: a clean single pass on SQLite, one group commit.
    reference = await open_store(StoreSettings(dsn=f"sqlite:///{tmp_path / 'reference.sqlite'}"))
    try:
        await reference.migrate()
        await apply(reference, batches)
        expected = (await state_digest(reference), await ledger_digest(reference))
    finally:
        await reference.aclose()

    # The store under test: one transaction per batch, then the bus re-delivers everything.
    applied = 0
    for one in batches:
        applied += (await apply(migrated, [one])).counts["applied"]
    again = await apply(migrated, batches)

    assert applied == sum(len(b.verdicts) for b in batches)
    assert again.counts == {"duplicate": applied}
    assert (await state_digest(migrated), await ledger_digest(migrated)) == expected


async def test_join_reads_and_checkpoints_round_trip(migrated: StoreBackend) -> None:
    batches = _context_batches(5)
    await apply(migrated, batches)

    request = JoinRequest("resolve_flow_binding", None, PINS, "flow-3", None, 0)
    snap = await migrated.read(join_snapshot_program(request, scope="*"))
    assert [(c.flow_id, c.merchant_id, c.arrival_seq) for c in snap.flow_claims] == [("flow-3", "m-4", 3)]
    assert sorted(r.role for r in snap.roles) == ["arrival_entities", "arrival_event", "flow_anchor"]
    key_request = JoinRequest("get_join_frame", None, PINS, None, (RUN, SCENARIO_RUN, "m-2", 1), 0)
    snap = await migrated.read(join_snapshot_program(key_request, scope="*"))
    assert sorted(c.flow_id for c in snap.key_claims) == ["dup", "flow-1"]  # the conflict is visible

    rows = await migrated.read(checkpoints_program("*", "join"))
    assert {(r.topic, r.partition, r.next_offset) for r in rows} == {(b.topic, 0, b.next_offset) for b in batches}

    # A re-delivered batch from behind the checkpoint leaves it where it is.
    arrivals = next(b for b in batches if b.topic == ARRIVAL[0])
    await apply(migrated, [batch(ARRIVAL[0], 0, 0, [envelope(ARRIVAL[1], {"merchant_id": "m-2", "arrival_seq": 1},
                                                             eid=f"{1:064x}")])])
    rows = await migrated.read(checkpoints_program("*", "join"))
    assert next(r.next_offset for r in rows if r.topic == ARRIVAL[0]) == arrivals.next_offset


@pytest.mark.parametrize("wanted", [1, 3, 256, 300])
async def test_key_lookups_return_exactly_the_matching_rows(migrated: StoreBackend, wanted: int) -> None:
    stored = [("*", f"topic-{i % 3}", i, "join", str(i), "file_line", None, "t") for i in range(400)]
    await migrated.write(_insert_checkpoints(stored))
    # Every other stored key, plus keys that match nothing (including one that differs only in its
    # INTEGER column, which PostgreSQL must compare as an integer).
    keys = [(s[0], s[1], s[2]) for s in stored[::2]][: max(wanted - 2, 1)] + [("*", "nope", 1), ("*", "topic-0", 1)]
    keys = keys[:wanted]

    def lookup() -> Program[set[tuple[Any, ...]]]:
        found: set[tuple[Any, ...]] = set()
        for start in range(0, len(keys), 256):
            rows = yield fetch_by_keys(
                "t.scope, t.topic, t.partition_id, t.next_offset", "checkpoints",
                (("scope", "TEXT"), ("topic", "TEXT"), ("partition_id", "INTEGER")), keys[start : start + 256],
            )
            assert len(rows) == len(set(rows))
            found.update(rows)
        return found

    by_key = {(s[0], s[1], s[2]): s[4] for s in stored}
    assert await migrated.read(lookup()) == {(*k, by_key[k]) for k in keys if k in by_key}


def _insert_checkpoints(rows: list[tuple[Any, ...]]) -> Program[None]:
    yield ExecMany(
        "INSERT INTO checkpoints (scope, topic, partition_id, plane, next_offset, offset_kind, watermark_ts_utc,"
        " updated_at_utc) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )


async def test_a_query_loop_store_reads_what_was_committed_and_refuses_every_write(tmp_path: Path) -> None:
    settings = StoreSettings(dsn=f"sqlite:///{tmp_path / 'q.sqlite'}")
    writer = await open_store(settings)
    reader = await open_store(settings, inline_reads=True)
    try:
        await writer.migrate()
        await writer.write(put(("k", "v")))
        assert await reader.read(meta()) == [("k", "v")]
        with pytest.raises(StoreError, match="read-only"):
            await reader.write(put(("k2", "v2")))
        with pytest.raises(StoreError):  # a program that writes inside a read is refused by the connection
            await reader.read(put(("k3", "v3")))
        assert await writer.read(meta()) == [("k", "v")]
    finally:
        await reader.aclose()
        await writer.aclose()
