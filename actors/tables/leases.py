"""The leases family: ``partition_leases``, one row per (scope, topic, partition) ever leased
(migration 0003; docs/architecture.md §Scale-out).

Rows are never deleted and every ownership change bumps ``epoch``; each change below is
conditional on the owner and epoch the caller read (``UPDATE ... WHERE owner = ? AND epoch = ?
RETURNING epoch``), so of two processes racing for one lease only one can win. Times are the
database server's clock (the dialect's ``{now_us}``), never a process's, in the sortable RFC 3339
form of ``format_ts_us``, so expiry comparisons are string comparisons on both backends.
"""

from __future__ import annotations

from typing import Final

from ctxplane.contracts.timestamps import format_ts_us
from ctxplane.runtime.store import DIALECTS, Fetch, Program, Row

__all__ = (
    "DB_NOW_US",
    "LeaseKey",
    "db_now_sql",
    "db_now_us_program",
    "idle_timeout_program",
    "insert_lease",
    "lease_rows_program",
    "live_owners_program",
    "lock_lease",
    "renew_lease",
    "take_lease",
)

LeaseKey = tuple[str, int]  # (topic, partition)

#: The database clock in microseconds since the epoch (one row, one column), for either backend.
DB_NOW_US: Final = "SELECT {now_us}"

_SELECT = "SELECT topic, partition_id, owner, epoch, expires_at_utc FROM partition_leases WHERE scope = ?"
_RENEW = (
    "UPDATE partition_leases SET expires_at_utc = ?"
    " WHERE scope = ? AND topic = ? AND partition_id = ? AND owner = ? AND epoch = ? RETURNING epoch"
)
_TAKE = (
    "UPDATE partition_leases SET owner = ?, epoch = epoch + 1, expires_at_utc = ?"
    " WHERE scope = ? AND topic = ? AND partition_id = ? AND owner = ? AND epoch = ? RETURNING epoch"
)
_INSERT = (
    "INSERT INTO partition_leases (scope, topic, partition_id, owner, epoch, expires_at_utc)"
    " VALUES (?, ?, ?, ?, 1, ?) ON CONFLICT (scope, topic, partition_id) DO NOTHING RETURNING epoch"
)
# The UPDATE changes nothing but locks the row until the commit (a plain SELECT would not, under
# PostgreSQL READ COMMITTED); a thief that committed first makes it match no row.
_LOCK = (
    "UPDATE partition_leases SET epoch = epoch"
    " WHERE scope = ? AND topic = ? AND partition_id = ? AND epoch = ? AND owner <> '' RETURNING epoch"
)
_LIVE_OWNERS = (
    "SELECT owner, count(*) FROM partition_leases WHERE scope = ? AND owner <> '' AND expires_at_utc > ?"
    " GROUP BY owner ORDER BY owner"
)


def db_now_sql(dialect: str) -> str:
    """:data:`DB_NOW_US` as ``dialect`` ("sqlite", "postgresql") renders it."""
    return DIALECTS[dialect].render(DB_NOW_US)


def db_now_us_program(now_sql: str = DB_NOW_US) -> Program[int]:
    """The database clock, microseconds since the epoch."""
    return int((yield Fetch(now_sql))[0][0])


def lease_rows_program(scope: str) -> Program[dict[LeaseKey, tuple[str, int, str]]]:
    """Every lease row of ``scope``: (topic, partition) → (owner, epoch, expires_at_utc)."""
    rows = yield Fetch(_SELECT, (scope,))
    return {(topic, int(p)): (row_owner, int(epoch), expiry) for topic, p, row_owner, epoch, expiry in rows}


def renew_lease(scope: str, key: LeaseKey, *, owner: str, epoch: int, expires: str) -> Program[bool]:
    """Extend a lease ``owner`` holds at ``epoch`` to ``expires``; False when it no longer does."""
    rows = yield Fetch(_RENEW, (expires, scope, key[0], key[1], owner, epoch))
    return bool(rows)


def take_lease(
    scope: str, key: LeaseKey, *, from_owner: str, epoch: int, to_owner: str, expires: str
) -> Program[int | None]:
    """Move a lease from ``from_owner`` at ``epoch`` to ``to_owner`` ('' releases it), expiring at
    ``expires``; the new epoch, or None when the row is no longer ``from_owner``'s at ``epoch``."""
    rows = yield Fetch(_TAKE, (to_owner, expires, scope, key[0], key[1], from_owner, epoch))
    return int(rows[0][0]) if rows else None


def insert_lease(scope: str, key: LeaseKey, *, owner: str, expires: str) -> Program[int | None]:
    """A first lease row for ``key`` (epoch 1); None when another process inserted one first."""
    rows = yield Fetch(_INSERT, (scope, key[0], key[1], owner, expires))
    return int(rows[0][0]) if rows else None


def lock_lease(scope: str, topic: str, partition: int, epoch: int) -> Program[bool]:
    """Lock the lease row until the commit and check that it is still held at ``epoch``."""
    rows = yield Fetch(_LOCK, (scope, topic, partition, epoch))
    return bool(rows)


def live_owners_program(scope: str) -> Program[dict[str, int]]:
    """Owners holding an unexpired lease in ``scope`` (owner → leases), by the database clock.

    Released leases have owner ``''`` (SQLite's lease table exists and stays empty)."""
    now_us = yield from db_now_us_program()
    rows = yield Fetch(_LIVE_OWNERS, (scope, format_ts_us(now_us)))
    return {str(owner): int(count) for owner, count in rows}


def idle_timeout_program() -> Program[list[Row]]:
    """PostgreSQL's ``idle_in_transaction_session_timeout`` (leases are PostgreSQL-only)."""
    rows = yield Fetch("SELECT setting FROM pg_settings WHERE name = 'idle_in_transaction_session_timeout'")
    return list(rows)
