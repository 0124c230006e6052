"""The store interface both backends implement: run programs in write or read transactions."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TypeVar

from ctxplane.runtime.exceptions import StoreError
from ctxplane.runtime.store.dialect import Dialect
from ctxplane.runtime.store.program import Program
from ctxplane.runtime.store.schema import (
    SchemaStatus,
    migrate_program,
    schema_status_program,
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
        return await self.write(schema_status_program())

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
