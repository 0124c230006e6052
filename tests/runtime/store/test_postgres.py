"""PostgreSQL-only behaviour of the store: outages, cut connections, secrets, the postgres profile.

The shared contract (migrations, transactions, snapshots, apply digests) is in ``test_backends.py``.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import anyio
import asyncpg
import pytest

from ctxplane.config.settings import StoreSettings, load_settings
from ctxplane.runtime.exceptions import StoreError, StoreUnavailable
from ctxplane.runtime.store import (
    MIGRATIONS,
    Execute,
    Fetch,
    Program,
    StoreBackend,
    open_store,
)
from tests.runtime.store import meta, put
from tests.support.process import ctxplane, write_config
from tests.support.stores import fresh_dsn
from tests.support.workload import context_events, publish

pytestmark = pytest.mark.postgres

T = TypeVar("T")

PROFILE = Path(__file__).resolve().parents[3] / "config" / "profiles" / "postgres.yaml"


@pytest.fixture
async def pg_dsn(tmp_path: Path) -> str:
    return await fresh_dsn("postgresql", tmp_path)


@pytest.fixture
async def pg_store(pg_dsn: str) -> AsyncIterator[StoreBackend]:
    store = await open_store(StoreSettings(dsn=pg_dsn))
    try:
        await store.migrate()
        yield store
    finally:
        await store.aclose()


def backend_pid() -> Program[int]:
    rows = yield Fetch("SELECT pg_backend_pid()")
    return int(rows[0][0])


# -- reaching the server ------------------------------------------------------------------------


async def test_unreachable_server_is_unavailable_and_the_password_stays_secret() -> None:
    with anyio.fail_after(30):  # guard only: a refused port fails at once
        with pytest.raises(StoreUnavailable) as info:
            await open_store(StoreSettings(dsn="postgresql://u:s3cret@127.0.0.1:1/db", busy_timeout_s=2))
    message = str(info.value)
    assert "u:***@127.0.0.1:1/db" in message
    chain: list[BaseException] = []
    exc: BaseException | None = info.value
    while exc is not None:
        chain.append(exc)
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    assert not any("s3cret" in f"{e!s} {e!r}" for e in chain)


async def test_unknown_database_is_an_error_not_an_outage(pg_dsn: str) -> None:
    missing = pg_dsn.rsplit("/", 1)[0] + "/no_such_database"
    with pytest.raises(StoreError, match="no_such_database") as info:
        await open_store(StoreSettings(dsn=missing))
    assert not isinstance(info.value, StoreUnavailable)  # retrying will not create it


async def test_a_wrongly_typed_parameter_is_an_error_not_an_outage(pg_store: StoreBackend) -> None:
    def program() -> Program[None]:
        yield Execute("INSERT INTO intake_counters (scope, topic, partition_id, name, value) VALUES (?, ?, ?, ?, ?)",
                      ("*", "t", "not a number", "applied", 1))

    with pytest.raises(StoreError, match=r"integer|int") as info:
        await pg_store.write(program())
    assert not isinstance(info.value, StoreUnavailable)
    await pg_store.write(put(("after", "ok")))  # the connection was rolled back and reused


async def test_reads_cannot_write(pg_store: StoreBackend) -> None:
    with pytest.raises(StoreError, match="read-only") as info:
        await pg_store.read(put(("a", "1")))
    assert not isinstance(info.value, StoreUnavailable)
    assert await pg_store.read(meta()) == []


# -- losing the connection ----------------------------------------------------------------------


async def test_a_connection_cut_mid_transaction_leaves_no_partial_state(pg_dsn: str, pg_store: StoreBackend) -> None:
    first_written = anyio.Event()
    writer_pid: list[int] = []

    def program() -> Program[None]:
        writer_pid.append((yield from backend_pid()))
        yield from put(("first", "1"))
        first_written.set()
        # Suspended here, between the two writes, until the server drops this connection.
        yield Fetch("SELECT pg_sleep(60)")
        yield from put(("second", "2"))

    async def cut_when_first_written() -> None:
        await first_written.wait()
        admin = await asyncpg.connect(pg_dsn)
        try:
            # With a timeout, pg_terminate_backend returns only once the backend has exited.
            assert await admin.fetchval("SELECT pg_terminate_backend($1, 10000)", writer_pid[0]) is True
        finally:
            await admin.close()

    with anyio.fail_after(30):  # guard only
        async with anyio.create_task_group() as tg:
            tg.start_soon(cut_when_first_written)
            with pytest.raises(StoreUnavailable, match="unavailable"):
                await pg_store.write(program())

        assert await pg_store.read(meta()) == []  # neither write happened
        # The same store carries on, on a new connection (the cut one is never handed out again).
        await pg_store.write(put(("third", "3")))
        assert await pg_store.read(meta()) == [("third", "3")]
        assert await pg_store.write(backend_pid()) != writer_pid[0]


async def test_a_cancelled_write_leaves_no_partial_state(pg_store: StoreBackend) -> None:
    first_written = anyio.Event()

    def program() -> Program[None]:
        yield from put(("first", "1"))
        first_written.set()
        yield Fetch("SELECT pg_sleep(10)")  # cancelled while waiting here
        yield from put(("second", "2"))

    with anyio.fail_after(30):  # guard only
        async with anyio.create_task_group() as tg:

            async def cancel_when_first_written() -> None:
                await first_written.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(cancel_when_first_written)
            await pg_store.write(program())
        assert tg.cancel_scope.cancelled_caught

        assert await pg_store.read(meta()) == []
        await pg_store.write(put(("third", "3")))
        assert await pg_store.read(meta()) == [("third", "3")]


async def test_a_pooled_connection_that_died_while_idle_is_replaced(pg_dsn: str, pg_store: StoreBackend) -> None:
    await pg_store.write(put(("a", "1")))
    # Kill the store's idle connection from another thread while this event loop is blocked, so
    # asyncpg has not yet seen the connection close when the next write takes it from the pool
    # (as after a server restart): BEGIN fails, and the store retries once on a fresh connection.
    killed = _blocking(_terminate_store_backends(pg_dsn))
    assert killed >= 1

    with anyio.fail_after(30):  # guard only
        await pg_store.write(put(("b", "2")))  # no error surfaces: nothing had run on the dead one
        assert await pg_store.read(meta()) == [("a", "1"), ("b", "2")]


async def _terminate_store_backends(dsn: str) -> int:
    admin = await asyncpg.connect(dsn)
    try:
        pids = await admin.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'ctxplane'"
        )
        for row in pids:
            # With a timeout, pg_terminate_backend returns only once the backend has exited.
            assert await admin.fetchval("SELECT pg_terminate_backend($1, 10000)", row["pid"]) is True
        return len(pids)
    finally:
        await admin.close()


def _blocking(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on a new event loop in another thread, blocking this one."""
    results: list[T] = []
    errors: list[BaseException] = []

    async def run() -> None:
        results.append(await coro)

    def target() -> None:
        try:
            anyio.run(run)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread below
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive(), "the blocking helper hung"
    if errors:
        raise errors[0]
    return results[0]


# -- the postgres profile -----------------------------------------------------------------------


def test_the_postgres_profile_is_a_non_local_profile() -> None:
    settings = load_settings(PROFILE, env={})
    assert settings.run.profile == "postgres"
    assert settings.store.backend == "postgresql"
    assert settings.store.auto_migrate is False
    assert settings.logging.format == "json"
    assert settings.metrics.listen == "127.0.0.1:9465"  # on, beside the local profile's 9464
    assert settings.bus.root == PROFILE.parents[2] / "runs" / "postgres" / "eb"
    assert settings.query.listen == f"unix:{PROFILE.parents[2] / 'runs' / 'postgres' / 'ctxplane.sock'}"


async def test_the_postgres_profile_runs_only_after_migrate(pg_dsn: str, tmp_path: Path) -> None:
    items = [item for seq in range(1, 31) for item in context_events(seq)]
    await anyio.to_thread.run_sync(publish, tmp_path / "eb", items)
    env = {
        "CTXPLANE__STORE__DSN": pg_dsn,
        "CTXPLANE__BUS__ROOT": str(tmp_path / "eb"),
        "CTXPLANE__QUERY__LISTEN": f"unix:{tmp_path / 'q.sock'}",
        "CTXPLANE__HEALTH__ARTIFACT_ROOT": str(tmp_path / "artifacts"),
    }

    def cli(*args: str) -> Any:
        return anyio.to_thread.run_sync(lambda: ctxplane(*args, "--config", str(PROFILE), env=env, timeout=120))

    refused = await cli("run", "--once")
    assert refused.returncode == 1
    assert "unapplied migrations" in refused.stderr and "ctxplane migrate" in refused.stderr

    migrated = await cli("migrate")
    applied = ", ".join(str(m.version) for m in MIGRATIONS)
    assert (migrated.returncode, migrated.stdout.strip()) == (0, f"applied migrations: {applied}"), migrated.stderr
    assert (await cli("migrate")).stdout.strip() == "schema is up to date"

    ran = await cli("run", "--once")
    assert ran.returncode == 0, ran.stderr[-2000:]
    digest = await cli("digest")
    assert digest.returncode == 0, digest.stderr

    # The same events through the same process on SQLite give the same state.
    sqlite_config = write_config(tmp_path, f"sqlite:///{tmp_path / 'store.sqlite'}")
    reference = await anyio.to_thread.run_sync(lambda: ctxplane("run", "--once", "--config", str(sqlite_config)))
    assert reference.returncode == 0, reference.stderr[-2000:]
    expected = await anyio.to_thread.run_sync(lambda: ctxplane("digest", "--config", str(sqlite_config)))
    assert digest.stdout.strip() == expected.stdout.strip()
