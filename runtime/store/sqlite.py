"""SQLite backend: WAL, one writer connection, a few read connections, programs run on threads.

sqlite3 calls block, so each transaction is one hop to a worker thread that drives the whole
program synchronously: per-transaction, not per-statement, thread overhead. The writer is used by
one task at a time (the store-writer actor); read connections are handed out from a small pool, and
each read is a ``BEGIN``-``COMMIT`` snapshot (WAL gives readers a consistent view without blocking
the writer).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterable
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

# Per-connection memory bounds (config store.sqlite_cache_mb / sqlite_mmap_mb; see config/settings.py).
DEFAULT_CACHE_MB = 32
DEFAULT_MMAP_MB = 0

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


# Rows per multi-row INSERT of a staging table: a power of two, so a group of any size is a few
# full statements and at most one statement of each smaller power of two — a handful of distinct
# statements per table, which sqlite3's statement cache keeps compiled (one statement per group size
# would fill the cache with large compiled statements: hundreds of MB).
_STAGE_ROWS = 256


def _copy_rows(conn: sqlite3.Connection, op: CopyRows) -> None:
    """Stage ``op.rows`` in a TEMP table of this connection (created on first use, emptied first;
    the program's end empties it again, so every transaction finds it empty).

    Multi-row ``INSERT … VALUES (…), (…), …`` statements, not ``executemany``: sqlite3 releases the
    GIL around every ``sqlite3_step``, and ``executemany`` steps once per row; while the event loop's
    thread runs Python (the partition actors classifying), each step then waits for the GIL to come
    back — up to the interpreter's switch interval. Measured with one CPU-bound thread beside it:
    ``executemany`` of 20,000 18-column rows 2,400 µs per row, the same rows in 1,800-row statements
    7.5 µs per row (5.4 and 4.1 µs with no other thread)."""
    conn.execute(op.table.create_sql())
    conn.execute(f"DELETE FROM temp.{op.table.name}")
    rows = op.rows
    start, size = 0, _STAGE_ROWS
    while start < len(rows):
        while size > len(rows) - start:
            size //= 2
        chunk = rows[start : start + size]
        conn.execute(_stage_insert(op.table, size), [value for row in chunk for value in row])
        start += size


@lru_cache(maxsize=64)
def _stage_insert(table: StageTable, rows: int) -> str:
    one = f"({', '.join('?' * len(table.columns))})"
    return f"INSERT INTO temp.{table.name} VALUES {', '.join([one] * rows)}"


def _classify(exc: sqlite3.Error) -> StoreError:
    text = str(exc).lower()
    if isinstance(exc, sqlite3.OperationalError) and any(marker in text for marker in _UNAVAILABLE_MARKERS):
        return StoreUnavailable(f"sqlite store unavailable: {exc}")
    if isinstance(exc, (sqlite3.IntegrityError, sqlite3.DataError)):
        return StoreDataError(f"sqlite store refused a value: {exc}")
    return StoreError(f"sqlite store error: {exc}")


class _Connection(sqlite3.Connection):
    """A connection that is never closed while a thread uses it.

    ``in_use`` is held by the thread that runs a transaction on it and by the one that closes it.
    Closing a sqlite3 connection while another thread is inside a statement is a use-after-free
    (a segfault), which a cancellation delivered from outside anyio (asyncio's own Ctrl-C
    handling) once made possible: the wait for the worker thread was abandoned and the clean-up
    closed the connection under it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.in_use = threading.Lock()


def _close(connections: Iterable[_Connection]) -> None:
    """Close ``connections`` (in a worker thread), each once no thread uses it any more."""
    for conn in connections:
        with conn.in_use:
            conn.close()


def _create_owner_only(path: Path) -> None:
    """Create the database file 0600 (whatever the umask) if it does not exist yet.

    SQLite creates the ``-wal`` and ``-shm`` files with the database file's mode, so the three are
    owner-only; a database file that exists keeps its mode (an operator may have chosen it).

    Only ever a *new* file (``O_EXCL``): opening and closing a descriptor of a database file that a
    SQLite connection of this process has open would silently drop that connection's POSIX locks
    (closing any descriptor of a file releases every ``fcntl`` lock the process holds on it). Another
    process closing its last connection then finds the file unlocked, believes itself the last user,
    checkpoints and *deletes the WAL and SHM files* under the running writer, whose later commits go
    to an unlinked WAL: invisible to every other process, and lost at its restart. (That is what an
    earlier ``os.close(os.open(path, O_CREAT))`` before every connection did.) A path that does not
    exist yet cannot be open in any connection, so this descriptor is safe to close.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return
    os.close(fd)


def _connect(path: Path, *, synchronous: str, busy_timeout_s: float, readonly: bool, cache_mb: int,
             mmap_mb: int) -> _Connection:
    uri = f"file:{path}?mode=ro" if readonly else f"file:{path}"
    conn = sqlite3.connect(
        uri, uri=True, isolation_level=None, check_same_thread=False, timeout=busy_timeout_s, factory=_Connection
    )
    if not readonly:
        conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute(f"PRAGMA cache_size=-{cache_mb * 1024}")  # negative: KiB
    conn.execute(f"PRAGMA mmap_size={mmap_mb * 1024 * 1024}")
    conn.execute("PRAGMA temp_store=MEMORY")
    return conn


class SqliteStore(StoreBackend):
    dialect = SQLITE

    def __init__(self, path: Path, *, synchronous: str, busy_timeout_s: float, readers: int,
                 inline_reads: bool = False, cache_mb: int = DEFAULT_CACHE_MB, mmap_mb: int = DEFAULT_MMAP_MB) -> None:
        self.path = path
        self._memory = {"cache_mb": cache_mb, "mmap_mb": mmap_mb}
        self._synchronous = synchronous
        self._busy_timeout_s = busy_timeout_s
        self._writer: _Connection | None = None
        self._write_lock = anyio.Lock()
        self._readers: list[_Connection] = []
        self._reader_slots = anyio.Semaphore(readers)
        self._reader_count = readers
        # Inline reads run on the calling event loop's thread: right for a loop that does nothing
        # but answer queries (a ~100 µs indexed read beats a thread hop), wrong for a shared loop.
        # Such a store is read-only: no write connection, and its read connections refuse writes.
        self._inline_reads = inline_reads
        self._closed = False

    async def open(self) -> SqliteStore:
        try:
            if self._inline_reads:
                # A query loop only reads: its first read connection proves the store opens; it
                # has no write connection at all.
                self._readers.append(self._connect_reader())
                return self
            self.path.parent.mkdir(parents=True, exist_ok=True)
            await anyio.to_thread.run_sync(_create_owner_only, self.path)
            self._writer = await anyio.to_thread.run_sync(
                lambda: _connect(self.path, synchronous=self._synchronous, busy_timeout_s=self._busy_timeout_s, readonly=False,
                                 **self._memory)
            )
        except OSError as exc:
            raise StoreUnavailable(f"cannot open sqlite store {self.path}: {exc.strerror or exc}") from None
        except sqlite3.Error as exc:
            raise _classify(exc) from None
        return self

    async def write(self, program: Program[T]) -> T:
        if self._inline_reads:
            raise StoreError("this sqlite store is read-only (it serves queries)")
        async with self._write_lock:
            conn = self._writer
            if conn is None or self._closed:
                raise StoreUnavailable("sqlite store is closed")
            return await anyio.to_thread.run_sync(self._write_sync, conn, program)

    @staticmethod
    def _write_sync(conn: _Connection, program: Program[T]) -> T:
        with conn.in_use:
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
                    conn = self._connect_reader() if self._inline_reads else await anyio.to_thread.run_sync(self._connect_reader)
                if self._inline_reads:
                    result = self._read_sync(conn, program)
                else:
                    result = await anyio.to_thread.run_sync(self._read_sync, conn, program)
            except BaseException:  # a connection that failed mid-read is not reused; re-raise
                if conn is not None:
                    with anyio.CancelScope(shield=True):
                        await anyio.to_thread.run_sync(_close, (conn,))
                raise
            if self._closed:
                await anyio.to_thread.run_sync(_close, (conn,))
            else:
                self._readers.append(conn)
            return result

    def _connect_reader(self) -> _Connection:
        conn = _connect(self.path, synchronous=self._synchronous, busy_timeout_s=self._busy_timeout_s, readonly=False,
                        **self._memory)
        if self._inline_reads:
            conn.execute("PRAGMA query_only=ON")  # a query loop's connections refuse every write
        return conn

    @staticmethod
    def _read_sync(conn: _Connection, program: Program[T]) -> T:
        with conn.in_use:
            try:
                conn.execute("BEGIN")
                try:
                    return run_program_sync(conn, program)
                finally:
                    conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise _classify(exc) from exc

    async def aclose(self) -> None:
        """Close every connection, in a worker thread, each once its transaction (if any) ended.

        Idempotent. Shielded: a cancelled caller still closes everything (closing the writer
        checkpoints the WAL, which must not be cut short either)."""
        self._closed = True
        with anyio.CancelScope(shield=True):
            async with self._write_lock:
                writer, self._writer = self._writer, None
            readers, self._readers = self._readers, []
            connections = [c for c in (writer, *readers) if c is not None]
            if connections:
                await anyio.to_thread.run_sync(_close, connections)


async def open_sqlite(path: Path, *, synchronous: str = "FULL", busy_timeout_s: float = 5.0, readers: int = 4,
                      inline_reads: bool = False, cache_mb: int = DEFAULT_CACHE_MB,
                      mmap_mb: int = DEFAULT_MMAP_MB) -> SqliteStore:
    """Open the store; ``cache_mb`` / ``mmap_mb`` bound each connection's page cache and memory map
    (config ``store.sqlite_cache_mb`` / ``store.sqlite_mmap_mb``)."""
    return await SqliteStore(path, synchronous=synchronous, busy_timeout_s=busy_timeout_s, readers=readers,
                             inline_reads=inline_reads, cache_mb=cache_mb, mmap_mb=mmap_mb).open()


class SqliteLock:
    """An exclusive advisory lock next to the database: SQLite deployments are single-process.

    A second ``ctxplane run`` on the same database would interleave two writers' checkpoints; the
    lock makes it refuse clearly instead. The OS drops the lock when the process dies (even kill -9,
    which leaves the file behind: harmless, the next process takes the lock on it).

    :meth:`release` removes the file while still holding the lock. So that a process which opened
    the file just before it was removed cannot then hold a lock on a deleted file while a third
    locks a new one, :meth:`acquire` checks after locking that the path still names the file it
    locked, and starts again if not.
    """

    def __init__(self, db_path: Path) -> None:
        self.path = db_path.with_name(db_path.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        import fcntl
        import os

        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise StoreError(
                    f"another ctxplane process is running on {self.path.with_suffix('')}; "
                    "SQLite deployments are single-process (use PostgreSQL to run several)"
                ) from None
            try:
                current = os.stat(self.path)
            except FileNotFoundError:
                current = None
            locked = os.fstat(fd)
            if current is not None and (current.st_dev, current.st_ino) == (locked.st_dev, locked.st_ino):
                self._fd = fd
                return
            os.close(fd)  # removed (or replaced) by its previous holder's release: lock the new file

    def held_elsewhere(self) -> bool:
        """Whether another process holds the lock now. Takes nothing that outlives the call: a
        shared lock is tried and dropped at once (a ``ctxplane run`` starting in that instant is
        refused as if a second process ran, and says so)."""
        import fcntl
        import os

        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False  # removed by its last holder's release: nobody holds it
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing drops the shared lock, if taken
        return False

    def release(self) -> None:
        import os

        if self._fd is not None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            os.close(self._fd)
            self._fd = None
