"""Store tests: the backend contract (both backends) and PostgreSQL-only behaviour.

Tiny programs over ``store_meta`` (a plain key/value table of the schema) shared by both modules.
"""

from __future__ import annotations

from typing import Any

from ctxplane.runtime.store import ExecMany, Fetch, Program


def put(*pairs: tuple[str, str]) -> Program[None]:
    yield ExecMany("INSERT INTO store_meta (meta_key, meta_value) VALUES (?, ?)", list(pairs))


def meta() -> Program[list[tuple[Any, ...]]]:
    rows: list[tuple[Any, ...]] = yield Fetch("SELECT meta_key, meta_value FROM store_meta ORDER BY meta_key")
    return rows
