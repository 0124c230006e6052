"""PostgreSQL backend: an asyncpg pool; each program runs in one transaction on one connection.

The storage logic lives in the programs (:mod:`ctxplane.runtime.store.program`); this module only runs
their operations with ``await``. Per call:

  1. acquire a pooled connection and ``BEGIN`` (``write``: READ COMMITTED; ``read``: REPEATABLE
     READ, READ ONLY, so every query of one program sees one snapshot). A connection that turns out
     dead at this point (the server restarted since it was pooled) is replaced once: no program
     operation has run yet, so retrying is safe;
  2. drive the program: ``Fetch`` → ``fetch`` (rows as tuples), ``Execute`` → ``execute``,
     ``ExecMany`` → ``executemany`` (pipelined by asyncpg; skipped when there are no rows),
     ``CopyRows`` → binary ``COPY`` into a TEMP staging table of the connection (see below);
  3. ``COMMIT`` when the program returns;
  4. on any failure: roll back if the connection is healthy, otherwise terminate it, so a broken
     connection is never handed out again; then release it to the pool.

Isolation of writes: READ COMMITTED. The store has one writer per set of partitions (the
store-writer actor), and its programs read only rows that no other transaction writes concurrently,
so a stricter level would add nothing for them, while it would turn benign concurrent inserts of a
shared row (``ON CONFLICT DO NOTHING`` on the same ``context_pins`` row from two processes) into
serialization failures. Exact cross-process conflict detection (two processes writing one frame)
needs more than REPEATABLE READ anyway; that is the lease design's job, not this adapter's.

Errors: failures that a later retry may fix (connection refused or lost, server shutting down or
not yet accepting connections, too many connections, timeouts, serialization failures) raise
:class:`StoreUnavailable`; a value the server refuses (out of range, NUL in text, a constraint)
raises :class:`StoreDataError`; everything else raises :class:`StoreError`. An exception raised by the
program itself propagates unchanged (after the rollback), as with SQLite. Messages never contain
the DSN password.

Staging tables (:class:`~ctxplane.runtime.store.program.StageTable`) are TEMP tables created
``ON COMMIT DELETE ROWS`` on first use by a connection, so every transaction finds them empty and
nothing is left behind between commits; a connection remembers which ones it has once the
transaction that created them committed (a rolled-back CREATE is re-run next time). Every
connection runs with ``jit = off``: our statements are index lookups and set-based writes of a few
thousand rows, for which LLVM compilation costs more than it saves (measured on the apply program's
statements: about 20% of the store-writer's time went to JIT with it on).

A connection lost during ``COMMIT`` leaves the outcome unknown; it is reported as StoreUnavailable
and the caller retries. The apply program is idempotent, so a retry of a commit that did land
only counts the events as duplicates.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar
from urllib.parse import unquote, urlsplit

import anyio
import asyncpg
import asyncpg.exceptions as pgerr

from ctxplane.config.settings import StoreSettings, redact_dsn
from ctxplane.runtime.exceptions import StoreDataError, StoreError, StoreUnavailable
from ctxplane.runtime.store.backend import StoreBackend
from ctxplane.runtime.store.dialect import POSTGRES
from ctxplane.runtime.store.program import CopyRows, ExecMany, Execute, Fetch, Op, Program

__all__ = ("PostgresStore", "open_postgres")

T = TypeVar("T")

# Connections per store. ctxplane opens one store for the store-writer (one transaction at a time)
# and one for queries; 8 concurrent read snapshots keep 2 cores busy without making PostgreSQL
# juggle more backends than it has CPUs for. One connection is opened eagerly so a store that is
# down fails at open, not at the first transaction.
POOL_MIN_SIZE = 1
POOL_MAX_SIZE = 8

# No single statement of ours runs anywhere near this long (the biggest is one executemany of a
# group commit, well under a second); it only bounds a call to a server that stopped answering
# without closing the connection (a blackholed network path), which would otherwise hang the
# store-writer forever instead of letting it report the store unavailable and retry.
_COMMAND_TIMEOUT_S = 60.0

# Rollback, release and close are bounded: cleanup must not hang on a connection whose peer
# vanished (a blackholed TCP path never answers). Past this, the connection is terminated.
_CLEANUP_TIMEOUT_S = 2.0

# Errors after which a retry, later, may succeed. Class 08 (connection exception), 53 (insufficient
# resources: too many connections, disk full), 57 (operator intervention: admin shutdown, crash
# shutdown, "the database system is starting up", a cancelled query), 58 (system / I/O error) and
# 40 (transaction rollback: serialization failure, deadlock). InvalidCachedStatementError and
# OutdatedSchemaCacheError follow DDL run by another process; asyncpg has already dropped the stale
# plan, so the retry succeeds.
_TRANSIENT: tuple[type[BaseException], ...] = (
    pgerr.PostgresConnectionError,
    pgerr.InsufficientResourcesError,
    pgerr.OperatorInterventionError,
    pgerr.PostgresSystemError,
    pgerr.TransactionRollbackError,
    pgerr.IdleInTransactionSessionTimeoutError,
    pgerr.InvalidCachedStatementError,
    pgerr.OutdatedSchemaCacheError,
    OSError,  # includes ConnectionError (refused, reset) and socket.gaierror
    TimeoutError,  # asyncio.TimeoutError: connect, acquire or command timeout
)

# Errors about the values of one statement, which fail the same way on every retry: class 22 (data
# exception: an integer out of int8 range — asyncpg raises it client-side too, "invalid input for
# query argument" — text with U+0000, a string too long) and 23 (integrity constraint violation).
_DATA: tuple[type[BaseException], ...] = (pgerr.DataError, pgerr.IntegrityConstraintViolationError)

# Errors that mean the connection itself is gone or unusable: never reuse it.
_CONNECTION_LOST: tuple[type[BaseException], ...] = (
    pgerr.PostgresConnectionError,
    pgerr.AdminShutdownError,
    pgerr.CrashShutdownError,
    pgerr.IdleInTransactionSessionTimeoutError,
    OSError,
    TimeoutError,
)


# The transaction isolation levels the programs run at (asyncpg's names).
_Isolation = Literal["read_committed", "repeatable_read"]


class _Connection(asyncpg.Connection):
    """An asyncpg connection that remembers which staging tables exist in its session."""

    __slots__ = ("staging_tables",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.staging_tables: set[str] = set()


class _Redactor:
    """Removes the DSN password from any text derived from a driver error."""

    def __init__(self, dsn: str) -> None:
        self.dsn = redact_dsn(dsn)
        try:
            password = urlsplit(dsn).password
        except ValueError:
            password = None
        self._secrets = tuple({password, unquote(password)} - {""}) if password else ()

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


class PostgresStore(StoreBackend):
    """A PostgreSQL store on an asyncpg pool; create it with :func:`open_postgres`.

    Invariant: a connection taken from the pool goes back either with no open transaction or
    terminated; it is never released mid-transaction or after an unknown failure.
    """

    dialect = POSTGRES

    def __init__(
        self, dsn: str, *, timeout_s: float, min_size: int = POOL_MIN_SIZE, max_size: int = POOL_MAX_SIZE,
        read_timeout_s: float | None = None,
    ) -> None:
        self._dsn = dsn
        self._redact = _Redactor(dsn)
        self._timeout_s = timeout_s
        self._read_timeout_s = read_timeout_s
        self._min_size = min_size
        self._max_size = max_size
        self._pool: asyncpg.Pool | None = None
        self._closed = False

    @property
    def redacted_dsn(self) -> str:
        return self._redact.dsn

    async def open(self) -> PostgresStore:
        """Create the pool and its first connection.

        Raises:
            StoreUnavailable: the server cannot be reached within ``timeout_s``.
            StoreError: the server refused us for a reason a retry will not fix (unknown database,
                authentication failure, malformed DSN).
        """
        try:
            with anyio.fail_after(self._timeout_s * 2):
                self._pool = await asyncpg.create_pool(
                    self._dsn,
                    min_size=self._min_size,
                    max_size=self._max_size,
                    timeout=self._timeout_s,  # per connection attempt
                    command_timeout=_COMMAND_TIMEOUT_S,
                    reset=_keep_session,
                    connection_class=_Connection,
                    server_settings={"application_name": "ctxplane", "jit": "off"},
                )
        except Exception as exc:  # noqa: BLE001 - classified: unavailable or a plain store error
            # ``from None``: the driver's exception chain is not needed and must not leak the DSN.
            raise self._classify(exc, lost=True, doing="connect") from None
        return self

    # -- StoreBackend --------------------------------------------------------------------------

    async def write(self, program: Program[T]) -> T:
        return await self._run(program, isolation="read_committed", readonly=False)

    async def read(self, program: Program[T]) -> T:
        """Run ``program`` in one REPEATABLE READ, READ ONLY snapshot.

        With ``read_timeout_s``, the whole read (acquire, connect, every statement) is bounded: a
        server that stopped answering (a blackholed path) fails the read with StoreUnavailable
        after that long, instead of after the 60 s command timeout. The query endpoint uses this
        so that a read during an outage answers UNAVAILABLE within the request's deadline.
        """
        if self._read_timeout_s is None:
            return await self._run(program, isolation="repeatable_read", readonly=True)
        try:
            with anyio.fail_after(self._read_timeout_s):
                return await self._run(program, isolation="repeatable_read", readonly=True)
        except TimeoutError:
            # The cancelled read terminated its connection (``_run`` step 4): nothing is reused.
            raise StoreUnavailable(
                f"postgresql store {self._redact.dsn} unavailable (read): no answer within {self._read_timeout_s} s"
            ) from None

    async def aclose(self) -> None:
        """Close the pool: wait (bounded) for connections in use, then close them all."""
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is None:
            return
        closed = False
        with anyio.CancelScope(shield=True), anyio.move_on_after(_CLEANUP_TIMEOUT_S):
            try:
                await pool.close()
                closed = True
            except Exception:  # noqa: BLE001 - whatever failed, the pool is terminated below
                closed = False
        if not closed:
            pool.terminate()

    # -- internals -----------------------------------------------------------------------------

    async def _run(self, program: Program[T], *, isolation: _Isolation, readonly: bool) -> T:
        pool = self._pool
        if pool is None or self._closed:
            program.close()
            raise StoreUnavailable(f"postgresql store {self._redact.dsn} is closed")
        # Step 1: a connection with an open transaction (one retry on a dead pooled connection).
        conn, tx = await self._begin(pool, isolation=isolation, readonly=readonly, program=program)
        created: set[str] = set()
        try:
            # Step 2: run the program.
            result = await _drive(conn, program, created)
            # Step 3: commit.
            await tx.commit()
        except BaseException as exc:
            # Step 4: never hand a broken or mid-transaction connection back to the pool.
            program.close()
            lost = _is_closed(conn)
            await self._discard(pool, conn, tx, exc, lost=lost)
            if isinstance(exc, Exception) and _is_driver_error(exc):
                raise self._classify(exc, lost=lost, doing="transaction") from exc
            raise
        if created:
            conn.staging_tables.update(created)  # they exist for good only now that CREATE committed
        await self._release(pool, conn)
        return result

    async def _begin(
        self, pool: asyncpg.Pool, *, isolation: _Isolation, readonly: bool, program: Program[Any]
    ) -> tuple[Any, Any]:
        for attempt in (1, 2):
            conn = None
            try:
                conn = await pool.acquire(timeout=self._timeout_s)
                tx = conn.transaction(isolation=isolation, readonly=readonly)
                await tx.start()
                return conn, tx
            except BaseException as exc:
                lost = conn is None or _is_closed(conn)
                if conn is not None:
                    await self._release(pool, conn, terminate=True)
                if attempt == 1 and _is_lost_connection(exc) and not isinstance(exc, TimeoutError):
                    # A pooled connection died while idle (e.g. the server restarted): no program
                    # operation has run yet, so one retry on a fresh connection is safe.
                    continue
                program.close()
                if isinstance(exc, Exception) and _is_driver_error(exc):
                    # ``from None`` as in open(): acquiring may have opened a new connection.
                    raise self._classify(exc, lost=lost, doing="begin") from None
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _discard(self, pool: asyncpg.Pool, conn: Any, tx: Any, exc: BaseException, *, lost: bool) -> None:
        """Roll back if the connection can still do it, else terminate it (bounded, shielded).

        A cancelled task may have left a query in flight, and a lost connection cannot roll back
        (the server already discarded the transaction with the session): both are terminated.
        """
        if not lost and isinstance(exc, Exception) and not _is_lost_connection(exc):
            rolled_back = False
            with anyio.CancelScope(shield=True), anyio.move_on_after(_CLEANUP_TIMEOUT_S):
                try:
                    await tx.rollback()
                    rolled_back = True
                except Exception:  # noqa: BLE001 - whatever failed, the connection is terminated below
                    rolled_back = False
            if rolled_back:
                await self._release(pool, conn)
                return
        await self._release(pool, conn, terminate=True)

    async def _release(self, pool: asyncpg.Pool, conn: Any, *, terminate: bool = False) -> None:
        if terminate or _is_closed(conn):
            _terminate(conn)
        with anyio.CancelScope(shield=True), anyio.move_on_after(_CLEANUP_TIMEOUT_S) as scope:
            try:
                await pool.release(conn, timeout=_CLEANUP_TIMEOUT_S)
            except Exception:  # noqa: BLE001 - asyncpg terminates a connection it cannot reset
                _terminate(conn)
        if scope.cancelled_caught:
            _terminate(conn)

    def _classify(self, exc: BaseException, *, lost: bool, doing: str) -> StoreError:
        detail = self._redact(f"{type(exc).__name__}: {exc}".rstrip(": "))
        # InterfaceError covers both "the connection is closed" and client-side misuse (a value of
        # the wrong type for a parameter): only the former is about availability.
        if isinstance(exc, _TRANSIENT) or (lost and isinstance(exc, pgerr.InterfaceError)):
            return StoreUnavailable(f"postgresql store {self._redact.dsn} unavailable ({doing}): {detail}")
        if isinstance(exc, _DATA):
            return StoreDataError(f"postgresql store refused a value ({doing}): {detail}")
        return StoreError(f"postgresql store {self._redact.dsn} error ({doing}): {detail}")


def _is_closed(conn: Any) -> bool:
    """Whether a pooled connection is dead. asyncpg detaches the proxy of a connection it saw
    die, after which every method (even ``is_closed``) raises InterfaceError: that counts as dead."""
    try:
        return bool(conn.is_closed())
    except pgerr.InterfaceError:
        return True


def _terminate(conn: Any) -> None:
    try:
        conn.terminate()
    except pgerr.InterfaceError:
        pass  # already detached: asyncpg cleaned it up when it saw the connection die


def _is_lost_connection(exc: BaseException) -> bool:
    return isinstance(exc, _CONNECTION_LOST)


def _is_driver_error(exc: Exception) -> bool:
    """Errors raised by asyncpg or the network, as opposed to errors raised by the program."""
    return isinstance(exc, (pgerr.PostgresError, pgerr.InterfaceError, pgerr.InternalClientError, OSError, TimeoutError))


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool reset hook: nothing to reset.

    Programs never change session state (no SET, LISTEN, advisory locks or open cursors; the only
    session objects are the staging tables, which are empty outside a transaction), and a
    connection always comes back committed, rolled back or terminated, so asyncpg's default reset
    (``RESET ALL`` and friends) would be one wasted round trip per transaction.
    """


async def _drive(conn: Any, program: Program[T], created: set[str]) -> T:
    """Run ``program``'s operations on ``conn`` (inside the caller's transaction); ``created``
    collects the staging tables this transaction created."""
    render = POSTGRES.render
    staged: set[str] = set()
    try:
        op: Op = next(program)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    while True:
        result: Any = None
        if type(op) is Fetch:
            result = [tuple(record) for record in await conn.fetch(render(op.sql), *op.params)]
        elif type(op) is ExecMany:
            if op.rows:
                await conn.executemany(render(op.sql), op.rows)
        elif type(op) is Execute:
            await conn.execute(render(op.sql), *op.params)
        elif type(op) is CopyRows:
            await _copy_rows(conn, op, staged, created)
        else:
            raise TypeError(f"not a store operation: {op!r}")
        try:
            op = program.send(result)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]


async def _copy_rows(conn: Any, op: CopyRows, staged: set[str], created: set[str]) -> None:
    """Binary COPY of ``op.rows`` into the connection's TEMP staging table (see the module docstring)."""
    name = op.table.name
    if name not in conn.staging_tables and name not in created:
        await conn.execute(op.table.create_sql(" ON COMMIT DELETE ROWS"))
        created.add(name)
    elif name in staged:
        await conn.execute(f"DELETE FROM {name}")  # staged twice in one transaction: replace
    staged.add(name)
    if not op.rows:
        return
    try:
        await conn.copy_records_to_table(name, records=op.rows, columns=op.table.column_names)
    except OverflowError as exc:
        # COPY encodes client-side: an int beyond int8 is an OverflowError here, where a bound
        # parameter would be a DataError; the same refusal, so the same StoreDataError.
        raise StoreDataError(f"postgresql store refused a value (copy into {name}): {exc}") from exc


async def open_postgres(settings: StoreSettings, *, read_timeout_s: float | None = None) -> PostgresStore:
    """Connect to the PostgreSQL store named by ``settings.dsn``.

    ``settings.busy_timeout_s`` bounds each connection attempt and each wait for a free pooled
    connection; ``read_timeout_s``, when given, bounds each whole read (see :meth:`PostgresStore.read`).

    Raises:
        StoreUnavailable: the server cannot be reached (the message carries no password).
        StoreError: the server refused the connection for a reason a retry will not fix.
    """
    return await PostgresStore(settings.dsn.get_secret_value(), timeout_s=settings.busy_timeout_s, read_timeout_s=read_timeout_s).open()
