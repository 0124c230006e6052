"""Fresh stores for tests: a SQLite file, or a new PostgreSQL database on the server `make test` started."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

BACKENDS = ("sqlite", "postgresql")


def postgres_admin_dsn() -> str | None:
    """The DSN of the PostgreSQL server started by `make test` (ops/run_tests.sh), if any."""
    return os.environ.get("CTXPLANE_TEST_PG_DSN")


async def fresh_dsn(backend: str, tmp_path: Path) -> str:
    """A DSN for an empty store of ``backend``; skips when PostgreSQL is not running here."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'store.sqlite'}"
    admin = postgres_admin_dsn()
    if admin is None:
        if os.environ.get("CTXPLANE_REQUIRE_PG"):
            pytest.fail("CTXPLANE_REQUIRE_PG is set but CTXPLANE_TEST_PG_DSN is not")
        pytest.skip("PostgreSQL not started (run the suite with `make test`)")
    import asyncpg

    name = f"t_{uuid.uuid4().hex[:16]}"
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return admin.rsplit("/", 1)[0] + "/" + name


def query_rows(dsn: str, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """Run one read query against any store (for assertions in synchronous tests)."""
    import anyio

    from ctxplane.config.settings import StoreSettings
    from ctxplane.runtime.store import Fetch, open_store

    def program():  # type: ignore[no-untyped-def]
        return (yield Fetch(sql, params))

    async def go() -> list[tuple[object, ...]]:
        store = await open_store(StoreSettings(dsn=dsn))
        try:
            return [tuple(row) for row in await store.read(program())]
        finally:
            await store.aclose()

    return anyio.run(go)
