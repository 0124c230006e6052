"""The SQLite store (db, WAL, SHM), its lock file and the reconciliation artifact are owner-only files,
whatever the umask, and making them so never costs the live writer its locks.

An earlier attempt created the database file with ``os.close(os.open(path, O_CREAT, 0o600))``
before *every* connection. Closing any descriptor of a file drops every POSIX lock the process holds
on it, so each new reader connection silently released the live writer's SQLite locks; the next
outside process to close its connection then believed itself the last user, checkpointed and
deleted the WAL and SHM under the running writer, and every later commit went to an unlinked WAL —
invisible to other processes (the chaos tests timed out "waiting for … consumed") and lost at
restart. The second test below is that failure, reduced to the store API.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from ctxplane.config.settings import StoreSettings
from ctxplane.runtime.store import ExecMany, Execute, Fetch, open_store
from tests.support.process import CtxplaneProcess, write_config
from tests.support.workload import context_events, publish


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    previous = os.umask(0o022)  # what most machines have: the files must not depend on it
    try:
        yield
    finally:
        os.umask(previous)


def test_the_store_its_wal_shm_lock_and_the_artifact_are_0600_under_a_real_run(
    tmp_path: Path, permissive_umask: None
) -> None:
    db = tmp_path / "s.sqlite"
    config = write_config(tmp_path, f"sqlite:///{db}", health={"artifact_root": str(tmp_path / "artifacts")})
    publish(tmp_path / "eb", context_events(3))
    with CtxplaneProcess(config):
        # While the process runs, the database is open in WAL mode: all four files exist.
        files = [db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm"), db.with_name(db.name + ".lock")]
        assert {path.name: _mode(path) for path in files} == {path.name: 0o600 for path in files}
    artifacts = list((tmp_path / "artifacts").rglob("reconciliation.json"))
    assert artifacts, "the reconciliation artifact is written at shutdown"
    assert {_mode(path) for path in artifacts} == {0o600}
    # A second run on the existing store keeps working (and the mode of what exists).
    with CtxplaneProcess(config):
        assert _mode(db) == 0o600


def test_an_existing_store_keeps_the_mode_its_operator_chose(tmp_path: Path, permissive_umask: None) -> None:
    db = tmp_path / "s.sqlite"

    async def touch() -> None:
        async with await open_store(StoreSettings(dsn=f"sqlite:///{db}")) as store:
            await store.migrate()

    anyio.run(touch)
    os.chmod(db, 0o640)
    anyio.run(touch)
    assert _mode(db) == 0o640


_OUTSIDE_READ = (
    "import sqlite3, sys\n"
    "conn = sqlite3.connect(sys.argv[1])\n"
    "print(conn.execute('SELECT count(*) FROM t').fetchone()[0])\n"
    "conn.close()\n"
)


def _outside_count(db: Path) -> int:
    """Rows another process sees; its connection closes, as every `ctxplane digest` or test query does."""
    return int(subprocess.run([sys.executable, "-c", _OUTSIDE_READ, str(db)], capture_output=True, text=True,
                              check=True).stdout)


async def test_opening_more_connections_never_drops_the_writers_locks(tmp_path: Path) -> None:
    """A second store and new reader connections in the writer's process, then an outside process
    that connects and disconnects: the writer's next commit is still visible outside."""
    db = tmp_path / "s.sqlite"
    settings = StoreSettings(dsn=f"sqlite:///{db}")

    def create():  # type: ignore[no-untyped-def]
        yield Execute("CREATE TABLE t (x INTEGER)")

    def insert(x: int):  # type: ignore[no-untyped-def]
        yield ExecMany("INSERT INTO t VALUES (?)", [(x,)])

    def count():  # type: ignore[no-untyped-def]
        return (yield Fetch("SELECT count(*) FROM t"))[0][0]

    async with await open_store(settings) as writer:
        await writer.write(create())
        await writer.write(insert(1))
        async with await open_store(settings) as other:  # as `ctxplane run` does: two stores, one file
            assert await other.read(count()) == await writer.read(count()) == 1
            assert await anyio.to_thread.run_sync(_outside_count, db) == 1
            await writer.write(insert(2))
            assert await anyio.to_thread.run_sync(_outside_count, db) == 2
        assert db.with_name(db.name + "-wal").exists()  # nobody deleted it under the writer
        await writer.write(insert(3))
        assert await anyio.to_thread.run_sync(_outside_count, db) == 3
