"""Lookups of many rows by primary key in one statement, the shape both backends answer well."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import lru_cache
from typing import Any, TypeAlias

from ctxplane.runtime.store import Fetch

__all__ = ("CHUNK", "KeySpec", "chunks", "fetch_by_keys")

# Key lookups are split into chunks of at most this many keys: well under both backends' bound-
# parameter limits (SQLite 32766, PostgreSQL 32767) and small enough for good plans. A power of two,
# because chunks are padded to the next power of two (see ``fetch_by_keys``).
CHUNK = 256

# A lookup key: (column, declared SQL type) pairs, as in migrations/0001_initial.sql. PostgreSQL
# needs the types to type the parameters of a VALUES list: untyped, they would be ``text``, and
# comparing them with an INTEGER/BIGINT column fails ("operator does not exist: bigint = text").
KeySpec: TypeAlias = tuple[tuple[str, str], ...]


def chunks(items: Sequence[Any], size: int = CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def fetch_by_keys(columns: str, table: str, key: KeySpec, keys: Sequence[tuple[Any, ...]]) -> Fetch:
    """A Fetch of ``columns`` from the rows of ``table`` whose ``key`` is one of ``keys``.

    Rendered as a join with a VALUES list, ``SELECT columns FROM (VALUES (CAST(? AS T), ...), ...)
    AS k JOIN table AS t ON t.col = k.column1 AND ...``, the one shape both backends answer with
    a primary-key lookup per key: on SQLite a row-value ``(a, b) IN (VALUES ...)`` (or ``IN ((?, ?),
    ...)``) scans the whole table (measured: 65 ms for 250 keys against 200k rows, vs 0.6 ms for the
    join), and PostgreSQL plans the join as a nested loop of index scans. The casts give PostgreSQL
    the parameter types.

    ``keys`` must be distinct (a duplicate key would return its rows twice) and at most
    ``CHUNK`` long. The list is padded with NULL keys (which match nothing) to the next power of
    two, so a handful of distinct SQL strings cover every batch size: the dialect's render cache and
    PostgreSQL's prepared-statement cache stay small and warm.
    """
    size = 1 << max(len(keys) - 1, 0).bit_length()
    params: list[Any] = [value for k in keys for value in k]
    params.extend([None] * (len(key) * (size - len(keys))))
    return Fetch(_keyed_select(columns, table, key, size), params)


@lru_cache(maxsize=256)
def _keyed_select(columns: str, table: str, key: KeySpec, size: int) -> str:
    one = "(" + ", ".join(f"CAST(? AS {sql_type})" for _name, sql_type in key) + ")"
    on = " AND ".join(f"t.{name} = k.column{i}" for i, (name, _type) in enumerate(key, start=1))
    return f"SELECT {columns} FROM (VALUES {', '.join([one] * size)}) AS k JOIN {table} AS t ON {on}"
