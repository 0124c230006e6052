"""Store programs: storage logic written once, run by either backend.

A *program* is a generator that yields operations (:class:`Fetch`, :class:`Execute`,
:class:`ExecMany`, :class:`CopyRows`) and receives each operation's result; its return value is the program's result.
The logic (what to read, what to decide, what to write) lives in the program, once; a backend only
knows how to run operations — the SQLite backend drives a program synchronously on its connection's
thread (one thread hop per transaction), the PostgreSQL backend drives it with ``await``. This is the
sans-I/O shape: no SQLite/PostgreSQL copies of the store logic.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeVar

__all__ = ("CopyRows", "ExecMany", "Execute", "Fetch", "Op", "Program", "Row", "StageTable")

Row: TypeAlias = tuple[Any, ...]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Fetch:
    """Run a query; the program receives ``list[Row]``. SQL uses ``?`` placeholders."""

    sql: str
    params: Sequence[Any] = ()


@dataclass(frozen=True, slots=True)
class Execute:
    """Run one statement; the program receives ``None``."""

    sql: str
    params: Sequence[Any] = ()


@dataclass(frozen=True, slots=True)
class ExecMany:
    """Run one statement per parameter row (batched by the driver); the program receives ``None``."""

    sql: str
    rows: Sequence[Sequence[Any]]


@dataclass(frozen=True, slots=True)
class StageTable:
    """A staging table: a TEMP table of the writing connection, filled by :class:`CopyRows`.

    ``columns`` are ``(name, SQL type)`` pairs in the order of the staged rows (the types of
    migrations/0001_initial.sql: TEXT, INTEGER, BIGINT). The name starts with ``stage_`` so it can
    never shadow a store table; SQL of the same transaction reads it by that name.
    """

    name: str
    columns: tuple[tuple[str, str], ...]

    def __post_init__(self) -> None:
        if not self.name.startswith("stage_") or not self.name.replace("_", "").isalnum():
            raise ValueError(f"a staging table is named stage_<word>, not {self.name!r}")

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(name for name, _type in self.columns)

    def create_sql(self, suffix: str = "") -> str:
        body = ", ".join(f"{name} {sql_type}" for name, sql_type in self.columns)
        return f"CREATE TEMP TABLE IF NOT EXISTS {self.name} ({body}){suffix}"


@dataclass(frozen=True, slots=True)
class CopyRows:
    """Make ``rows`` the contents of ``table`` for the rest of the transaction; receives ``None``.

    A staging table is empty at the start of every transaction; CopyRows replaces whatever it holds
    (an earlier CopyRows of the same transaction included) with ``rows``, in this order, and the
    program then writes the store's tables from it with set-based SQL (``INSERT … SELECT … FROM
    stage_x``). Nothing staged outlives the transaction. PostgreSQL copies the rows in with binary
    COPY; SQLite inserts them with one executemany. A value the store cannot hold fails the
    transaction with StoreDataError, as it would in an INSERT.
    """

    table: StageTable
    rows: Sequence[Sequence[Any]]


Op: TypeAlias = Fetch | Execute | ExecMany | CopyRows
Program: TypeAlias = Generator[Op, Any, T]
