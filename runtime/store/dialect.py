"""What differs between SQLite and PostgreSQL, kept in one small place.

Programs and migrations are written once with ``?`` placeholders and a few ``{token}`` markers; a
dialect renders them for its backend once per distinct SQL string (cached), never per row.
"""

from __future__ import annotations

import re
from functools import lru_cache

__all__ = ("DIALECTS", "Dialect", "POSTGRES", "SQLITE")

_PLACEHOLDER = re.compile(r"\?")


class Dialect:
    """Renders portable SQL for one backend.

    Tokens: ``{without_rowid}`` (a clustered primary-key table where the backend has the notion);
    ``{now_us}`` (the database server's clock, microseconds since the epoch, as a BIGINT
    expression: leases are timed by it, never by a process's clock).
    """

    def __init__(self, name: str, *, numbered_params: bool, tokens: dict[str, str]) -> None:
        self.name = name
        self._numbered = numbered_params
        self._tokens = tokens
        self.render = lru_cache(maxsize=4096)(self._render)

    def _render(self, sql: str) -> str:
        for token, text in self._tokens.items():
            sql = sql.replace("{" + token + "}", text)
        if self._numbered:
            counter = iter(range(1, 1_000_000))
            sql = _PLACEHOLDER.sub(lambda _m: f"${next(counter)}", sql)
        return sql


SQLITE = Dialect("sqlite", numbered_params=False, tokens={
    "without_rowid": "WITHOUT ROWID",
    "now_us": "CAST((julianday('now') - 2440587.5) * 86400000000.0 AS INTEGER)",
})
POSTGRES = Dialect("postgresql", numbered_params=True, tokens={
    "without_rowid": "",
    "now_us": "CAST(FLOOR(EXTRACT(EPOCH FROM clock_timestamp()) * 1000000) AS BIGINT)",
})
DIALECTS = {"sqlite": SQLITE, "postgresql": POSTGRES}
