"""Versioned schema migrations shared by both backends.

Migrations are ``migrations/NNNN_name.sql`` files of portable SQL (statements separated by ``;`` at
line end). ``schema_migrations`` records what was applied. A store whose recorded version is newer
than anything this build knows is refused: running old code on a newer schema could corrupt it.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

from ctxplane.contracts.canonical import sha256_hex
from ctxplane.contracts.timestamps import now_utc
from ctxplane.runtime.exceptions import StoreError
from ctxplane.runtime.store.program import Execute, Fetch, Program

__all__ = (
    "MIGRATIONS", "Migration", "SchemaStatus", "migrate_program", "schema_status_program", "schema_version_program",
    "status_of",
)

_TABLE = """CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER NOT NULL PRIMARY KEY,
    name TEXT NOT NULL,
    checksum TEXT NOT NULL,
    applied_at_utc TEXT NOT NULL
)"""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return sha256_hex(self.sql.encode())[:16]

    def statements(self) -> list[str]:
        lines = [line for line in self.sql.splitlines() if not line.lstrip().startswith("--")]
        return [stmt.strip() for stmt in "\n".join(lines).split(";") if stmt.strip()]


def _load() -> tuple[Migration, ...]:
    found = []
    for entry in resources.files("ctxplane.runtime.store").joinpath("migrations").iterdir():
        if entry.name.endswith(".sql"):
            number, _, rest = entry.name.partition("_")
            found.append(Migration(int(number), rest.removesuffix(".sql"), entry.read_text(encoding="utf-8")))
    return tuple(sorted(found, key=lambda m: m.version))


MIGRATIONS: tuple[Migration, ...] = _load()


@dataclass(frozen=True, slots=True)
class SchemaStatus:
    current: int
    latest: int

    @property
    def pending(self) -> list[Migration]:
        return [m for m in MIGRATIONS if m.version > self.current]


def schema_version_program() -> Program[int]:
    """Read the applied schema version; needs no write transaction, but fails (a
    :class:`StoreError` from the backend) on a store without the migration table."""
    rows = yield Fetch("SELECT max(version) FROM schema_migrations")
    return int(rows[0][0] or 0)


def schema_status_program() -> Program[SchemaStatus]:
    """Read the applied schema version (0 for an empty store), creating the migration table."""
    yield Execute(_TABLE)
    rows = yield Fetch("SELECT max(version) FROM schema_migrations")
    return status_of(rows[0][0] or 0)


def status_of(current: int) -> SchemaStatus:
    """The status of a store at schema version ``current``.

    Raises:
        StoreError: ``current`` is newer than every migration this build knows.
    """
    latest = MIGRATIONS[-1].version if MIGRATIONS else 0
    if current > latest:
        raise StoreError(
            f"the store's schema is version {current}, newer than this ctxplane knows ({latest}); "
            "upgrade ctxplane before running it against this store"
        )
    return SchemaStatus(current, latest)


def migrate_program() -> Program[list[int]]:
    """Apply every pending migration in order, inside the caller's transaction."""
    status = yield from schema_status_program()
    applied = []
    for migration in status.pending:
        for statement in migration.statements():
            yield Execute(statement)
        yield Execute(
            "INSERT INTO schema_migrations (version, name, checksum, applied_at_utc) VALUES (?, ?, ?, ?)",
            (migration.version, migration.name, migration.checksum, now_utc()),
        )
        applied.append(migration.version)
    return applied
