"""Store programs: storage logic written once, run by either backend.

A *program* is a generator that yields operations (:class:`Fetch`, :class:`Execute`,
:class:`ExecMany`) and receives each operation's result; its return value is the program's result.
The logic (what to read, what to decide, what to write) lives in the program, once; a backend only
knows how to run operations — the SQLite backend drives a program synchronously on its connection's
thread (one thread hop per transaction), the PostgreSQL backend drives it with ``await``. This is the
sans-I/O shape: no SQLite/PostgreSQL copies of the store logic.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeVar

__all__ = ("ExecMany", "Execute", "Fetch", "Op", "Program", "Row")

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


Op: TypeAlias = Fetch | Execute | ExecMany
Program: TypeAlias = Generator[Op, Any, T]
