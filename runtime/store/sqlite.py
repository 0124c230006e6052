"""SQLite backend: WAL, one writer connection, a few read connections, programs run on threads.

sqlite3 calls block, so each transaction is one hop to a worker thread that drives the whole
program synchronously: per-transaction, not per-statement, thread overhead. The writer is used by
one task at a time (the store-writer actor); read connections are handed out from a small pool, and
each read is a ``BEGIN``-``COMMIT`` snapshot (WAL gives readers a consistent view without blocking
the writer).
"""

from __future__ import annotations

import sqlite3
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from ctxplane.runtime.exceptions import StoreDataError, StoreError, StoreUnavailable
from ctxplane.runtime.store.backend import StoreBackend
from ctxplane.runtime.store.dialect import SQLITE
from ctxplane.runtime.store.program import CopyRows, ExecMany, Execute, Fetch, Program, StageTable

__all__ = ("SqliteStore", "open_sqlite", "run_program_sync")

T = TypeVar("T")

# Errors that mean "the database is not usable right now" rather than "this program is wrong".
_UNAVAILABLE_MARKERS = ("locked", "busy", "disk i/o", "unable to open", "readonly", "disk is full")


def run_program_sync(conn: sqlite3.Connection, program: Program[T]) -> T:
    """Drive ``program`` to completion on ``conn`` (in the calling thread)."""
    render = SQLITE.render
    staged: set[str] = set()
    try:
        op = next(program)
        while True:
            try:
                if type(op) is Fetch:
                    result: Any = conn.execute(render(op.sql), op.params).fetchall()
                elif type(op) is ExecMany:
                    if op.rows:
                        conn.executemany(render(op.sql), op.rows)
                    result = None
                elif type(op) is Execute:
                    conn.execute(render(op.sql), op.params)
                    result = None
                elif type(op) is CopyRows:
                    _copy_rows(conn, op)
                    staged.add(op.table.name)
                    result = None
                else:
                    raise TypeError(f"not a store operation: {op!r}")
            except OverflowError as exc:
                # sqlite3 binds an int beyond 64 bits with OverflowError, not a sqlite3.Error; caught
                # around the driver call only, so the program's own errors still pass unchanged.
                raise StoreDataError(f"sqlite store refused a value: {exc}") from exc
            op = program.send(result)
    except StopIteration as stop:
        for name in staged:  # empty again before the commit, as PostgreSQL's ON COMMIT DELETE ROWS
            conn.execute(f"DELETE FROM temp.{name}")
        return stop.value  # type: ignore[no-any-return]


def _copy_rows(conn: sqlite3.Connection, op: CopyRows) -> None:
    """Stage ``op.rows`` in a TEMP table of this connection (created on first use, emptied first;
    the program's end empties it again, so every transaction finds it empty)."""
    conn.execute(op.table.create_sql())
    conn.execute(f"DELETE FROM temp.{op.table.name}")
    if op.rows:
        conn.executemany(_stage_insert(op.table), op.rows)


@lru_cache(maxsize=64)
def _stage_insert(table: StageTable) -> str:
    return f"INSERT INTO temp.{table.name} VALUES ({', '.join('?' * len(table.columns))})"


def _classify(exc: sqlite3.Error) -> StoreError:
    text = str(exc).lower()
    if isinstance(exc, sqlite3.OperationalError) and any(marker in text for marker in _UNAVAILABLE_MARKERS):
        return StoreUnavailable(f"sqlite store unavailable: {exc}")
    if isinstance(exc, (sqlite3.IntegrityError, sqlite3.DataError)):
        return StoreDataError(f"sqlite store refused a value: {exc}")
    return StoreError(f"sqlite store error: {exc}")


def _connect(path: Path, *, synchronous: str, busy_timeout_s: float, readonly: bool) -> sqlite3.Connection:
    uri = f"file:{path}?mode=ro" if readonly else f"file:{path}"
    conn = sqlite3.connect(
        uri, uri=True, isolation_level=None, check_same_thread=False, timeout=busy_timeout_s
    )
    if not readonly:
        conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA cache_size=-131072")
    conn.execute("PRAGMA mmap_size=1073741824")
    conn.execute("PRAGMA temp_store=MEMORY")
    return conn


class SqliteStore(StoreBackend):
    dialect = SQLITE

    def __init__(self, path: Path, *, synchronous: str, busy_timeout_s: float, readers: int,
                 inline_reads: bool = False) -> None:
        self.path = path
        self._synchronous = synchronous
        self._busy_timeout_s = busy_timeout_s
        self._writer: sqlite3.Connection | None = None
        self._write_lock = anyio.Lock()
        self._readers: list[sqlite3.Connection] = []
        self._reader_slots = anyio.Semaphore(readers)
        self._reader_count = readers
        # Inline reads run on the calling event loop's thread: right for a loop that does nothing
        # but answer queries (a ~100 µs indexed read beats a thread hop), wrong for a shared loop.
        self._inline_reads = inline_reads
        self._closed = False

    async def open(self) -> SqliteStore:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = await anyio.to_thread.run_sync(
                lambda: _connect(self.path, synchronous=self._synchronous, busy_timeout_s=self._busy_timeout_s, readonly=False)
            )
        except OSError as exc:
            raise StoreUnavailable(f"cannot open sqlite store {self.path}: {exc.strerror or exc}") from None
        except sqlite3.Error as exc:
            raise _classify(exc) from None
        return self

    async def write(self, program: Program[T]) -> T:
        async with self._write_lock:
            conn = self._writer
            if conn is None or self._closed:
                raise StoreUnavailable("sqlite store is closed")
            return await anyio.to_thread.run_sync(self._write_sync, conn, program)

    @staticmethod
    def _write_sync(conn: sqlite3.Connection, program: Program[T]) -> T:
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = run_program_sync(conn, program)
            except BaseException:  # any failure, cancellation included: roll back, then re-raise
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise _classify(exc) from exc

    async def read(self, program: Program[T]) -> T:
        async with self._reader_slots:
            conn = self._readers.pop() if self._readers else None
            try:
                if conn is None:
                    conn = await anyio.to_thread.run_sync(
                        lambda: _connect(self.path, synchronous=self._synchronous, busy_timeout_s=self._busy_timeout_s, readonly=False)
                    )
                if self._inline_reads:
                    result = self._read_sync(conn, program)
                else:
                    result = await anyio.to_thread.run_sync(self._read_sync, conn, program)
            except BaseException:  # a connection that failed mid-read is not reused; re-raise
                if conn is not None:
                    conn.close()
                raise
            if self._closed:
                conn.close()
            else:
                self._readers.append(conn)
            return result

    @staticmethod
    def _read_sync(conn: sqlite3.Connection, program: Program[T]) -> T:
        try:
            conn.execute("BEGIN")
            try:
                return run_program_sync(conn, program)
            finally:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise _classify(exc) from exc

    async def aclose(self) -> None:
        self._closed = True
        async with self._write_lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
        for conn in self._readers:
            conn.close()
        self._readers.clear()


async def open_sqlite(path: Path, *, synchronous: str = "FULL", busy_timeout_s: float = 5.0, readers: int = 4,
                      inline_reads: bool = False) -> SqliteStore:
    return await SqliteStore(path, synchronous=synchronous, busy_timeout_s=busy_timeout_s, readers=readers,
                             inline_reads=inline_reads).open()


class SqliteLock:
    """An exclusive advisory lock next to the database: SQLite deployments are single-process.

    A second ``ctxplane run`` on the same database would interleave two writers' checkpoints; the
    lock makes it refuse clearly instead. The OS drops the lock when the process dies (even kill -9).
    """

    def __init__(self, db_path: Path) -> None:
        self.path = db_path.with_name(db_path.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        import fcntl
        import os

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreError(
                f"another ctxplane process is running on {self.path.with_suffix('')}; "
                "SQLite deployments are single-process (use PostgreSQL to run several)"
            ) from None
        self._fd = fd

    def release(self) -> None:
        import os

        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
