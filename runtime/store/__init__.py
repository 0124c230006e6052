"""Storage: backends that run store programs, shared migrations, the dialect layer."""

from __future__ import annotations

from ctxplane.config.settings import StoreSettings
from ctxplane.runtime.exceptions import UsageError
from ctxplane.runtime.store.backend import StoreBackend
from ctxplane.runtime.store.dialect import DIALECTS, Dialect
from ctxplane.runtime.store.program import CopyRows, ExecMany, Execute, Fetch, Op, Program, Row, StageTable
from ctxplane.runtime.store.schema import MIGRATIONS, SchemaStatus

__all__ = (
    "DIALECTS",
    "MIGRATIONS",
    "CopyRows",
    "Dialect",
    "ExecMany",
    "Execute",
    "Fetch",
    "Op",
    "Program",
    "Row",
    "SchemaStatus",
    "StageTable",
    "StoreBackend",
    "open_store",
)


async def open_store(
    settings: StoreSettings, *, inline_reads: bool = False, read_timeout_s: float | None = None
) -> StoreBackend:
    """Connect to the store named by ``settings.dsn``.

    ``inline_reads`` (SQLite): a read-only store for a loop dedicated to queries: reads run on the
    caller's thread, on connections that refuse writes (``PRAGMA query_only``).
    ``read_timeout_s`` (PostgreSQL): bound every read, connecting included; an unanswered read
    raises StoreUnavailable after that long (SQLite reads are local files: not needed there).

    Raises:
        StoreUnavailable: the database cannot be reached (message carries no password).
    """
    if settings.backend == "sqlite":
        from ctxplane.runtime.store.sqlite import open_sqlite

        return await open_sqlite(
            settings.sqlite_path, synchronous=settings.synchronous, busy_timeout_s=settings.busy_timeout_s,
            inline_reads=inline_reads, cache_mb=settings.sqlite_cache_mb, mmap_mb=settings.sqlite_mmap_mb,
        )
    try:
        from ctxplane.runtime.store.postgres import open_postgres
    except ImportError:  # pragma: no cover - the PostgreSQL backend ships with the package
        raise UsageError("the PostgreSQL backend is not available in this build") from None
    return await open_postgres(settings, read_timeout_s=read_timeout_s)
