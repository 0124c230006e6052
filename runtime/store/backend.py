"""The store interface both backends implement: run programs in write or read transactions."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TypeVar

from ctxplane.runtime.exceptions import StoreError, StoreUnavailable
from ctxplane.runtime.store.dialect import Dialect
from ctxplane.runtime.store.program import Program
from ctxplane.runtime.store.schema import (
    SchemaStatus,
    migrate_program,
    schema_status_program,
    schema_version_program,
    status_of,
)

__all__ = ("StoreBackend",)

T = TypeVar("T")


class StoreBackend(ABC):
    """A connected store.

    ``write`` runs a program in one read-write transaction (commit on return, rollback on error);
    ``read`` runs a program in one read-only snapshot, so everything it reads is mutually consistent.
    Both raise :class:`~runtime.exceptions.StoreUnavailable` when the database cannot be reached,
    :class:`~runtime.exceptions.StoreDataError` when it refuses a value (out of a column's range, a
    constraint: deterministic, a retry fails the same way) and
    :class:`~runtime.exceptions.StoreError` for other storage failures.
    """

    dialect: Dialect

    @abstractmethod
    async def write(self, program: Program[T]) -> T: ...

    @abstractmethod
    async def read(self, program: Program[T]) -> T: ...

    @abstractmethod
    async def aclose(self) -> None: ...

    async def migrate(self) -> list[int]:
        """Apply pending migrations; returns the versions applied."""
        return await self.write(migrate_program())

    async def schema_status(self) -> SchemaStatus:
        """The applied schema version.

        A read when the migration table exists, so no write lock is taken: `ctxplane digest` and
        `replay`, and `run` at start-up, never queue behind a writer's commit just to learn that
        the schema is current. An empty store (no table yet) falls back to the write that creates it.

        Raises:
            StoreError: the store's schema is newer than this build (or any store failure).
        """
        try:
            current = await self.read(schema_version_program())
        except StoreUnavailable:
            raise
        except StoreError:  # no migration table: an empty store
            return await self.write(schema_status_program())
        return status_of(current)

    async def ensure_schema(self, *, auto_migrate: bool) -> list[int]:
        """Make sure the schema is current: migrate when allowed, else refuse clearly."""
        status = await self.schema_status()
        if not status.pending:
            return []
        if auto_migrate:
            return await self.migrate()
        raise StoreError(
            f"the store has unapplied migrations (schema {status.current}, latest {status.latest}); "
            "run `ctxplane migrate --config FILE` first"
        )

    async def __aenter__(self) -> StoreBackend:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
