"""Operator commands that move checkpoints run only while no ``ctxplane run`` does.

``replay``, ``checkpoint rewind`` and ``checkpoint reset`` write checkpoints. A running process
keeps its read positions in memory and commits them after every batch, so a checkpoint moved under
it would be overwritten by its next commit. Each command therefore refuses while a process runs on
the store, recognised by whichever sign the deployment gives:

- SQLite: the lock file ``ctxplane run`` holds (``<db>.lock``). The command takes it itself for its
  whole duration, so no process can start meanwhile. This sign is exact: it is the store's own.
- PostgreSQL with partition leases: a live lease (unexpired by the database clock) in the scope.
  :func:`refuse_if_leased` looks again inside the transaction that moves a checkpoint, so a
  process that took a lease after the first check is still seen. Exact too.
- PostgreSQL, for the commands that move checkpoints of a store in use (rewind, reset): the query
  endpoint (``query.listen``) accepts connections. A deployment without leases (file bus, static
  assignment) gives no other sign. It names the deployment rather than the store, so a copy of a
  live configuration pointed at another database is refused as well (give it another
  ``query.listen``). A replay does not check it: its common use is a rebuild into a fresh store
  beside the live process, which has the live ``query.listen`` in its copy of the configuration.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import anyio

from ctxplane.actors.resources import open_ready_store, scope_of
from ctxplane.actors.tables.leases import live_owners_program
from ctxplane.config.settings import Settings
from ctxplane.runtime.exceptions import StoreError
from ctxplane.runtime.server import endpoint_alive
from ctxplane.runtime.store import Program, StoreBackend
from ctxplane.runtime.store.sqlite import SqliteLock

__all__ = ("STOP_HINT", "exclusive_store", "refuse_if_leased", "running_process")

#: How to stop the process a refusal names (``ctxplane run`` commits its in-flight batches first).
STOP_HINT = "stop it first (SIGTERM or Ctrl-C: it commits its in-flight batches and exits)"


def _leases_line(owners: dict[str, int]) -> str:
    held = ", ".join(f"{owner} ({count})" for owner, count in owners.items())
    return f"ctxplane run holds partition leases on the store: {held}"


def refuse_if_leased(doing: str, scope: str) -> Program[None]:
    """Inside a write transaction: raise (rolling it back) when a live lease exists in ``scope``
    (by the database clock).

    Raises:
        StoreError: a process holds a lease.
    """
    owners = yield from live_owners_program(scope)
    if owners:
        raise StoreError(f"refusing to {doing}: {_leases_line(owners)}; {STOP_HINT}")


def _sqlite_lock(settings: Settings) -> SqliteLock:
    return SqliteLock(settings.store.sqlite_path)


def running_process(settings: Settings) -> str | None:
    """What shows that a process runs on this deployment, read without taking anything (for
    ``status --offline``); ``None`` when nothing does. Leases are read separately (they need the
    store)."""
    if settings.store.backend == "sqlite":
        lock = _sqlite_lock(settings)
        return f"a ctxplane process holds {lock.path}" if lock.held_elsewhere() else None
    if endpoint_alive(settings.query.listen):
        return f"a process answers on query.listen {settings.query.listen}"
    return None


@contextmanager
def _exclusive(settings: Settings, doing: str, *, endpoint: bool) -> Iterator[None]:
    """Hold the SQLite deployment lock for the duration; on PostgreSQL with ``endpoint``, refuse
    when the query endpoint answers.

    Raises:
        StoreError: another process holds the lock or serves the endpoint (exit code 1).
    """
    lock = _sqlite_lock(settings) if settings.store.backend == "sqlite" else None
    if lock is not None:
        try:
            lock.acquire()
        except StoreError:
            raise StoreError(
                f"refusing to {doing}: a ctxplane process holds {lock.path} (is `ctxplane run` running?); {STOP_HINT}"
            ) from None
    try:
        if lock is None and endpoint and endpoint_alive(settings.query.listen):
            raise StoreError(
                f"refusing to {doing}: a process answers on query.listen {settings.query.listen} "
                f"(is `ctxplane run` running?); {STOP_HINT}"
            )
        yield
    finally:
        if lock is not None:
            lock.release()


@asynccontextmanager
async def exclusive_store(settings: Settings, doing: str, *, endpoint: bool = True) -> AsyncIterator[StoreBackend]:
    """The store, opened (schema ready) while no process runs on it; see the module docstring.
    ``endpoint=False`` (a replay): the query endpoint is not taken as a sign.

    Raises:
        StoreError: a process runs (the lock, the endpoint or a live lease shows it), or the store fails.
    """
    with _exclusive(settings, doing, endpoint=endpoint):
        store = await open_ready_store(settings)
        try:
            owners = await store.read(live_owners_program(scope_of(settings)))
            if owners:
                raise StoreError(f"refusing to {doing}: {_leases_line(owners)}; {STOP_HINT}")
            yield store
        finally:
            with anyio.CancelScope(shield=True):
                await store.aclose()
