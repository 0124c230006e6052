"""The semantic state digest and the ledger digest (docs/operations.md §State digest), computed from the store alone.

The state digest covers what the planes *mean* — frames (role entries and payload hashes), binding
claims, the dedupe registry, pins, feature raw events and tiles — as canonical rows sorted by key. It
leaves out where events sat on the bus (topic, partition, offset, offset kind) and wall-clock
columns, so the same events give the same digest whatever the batching, restarts, interleaving,
backend or bus.
"""

from __future__ import annotations

import hashlib

from ctxplane.actors.tables.checkpoints import max_watermark_program
from ctxplane.actors.tables.dedupe import DEDUPE_DIGEST
from ctxplane.actors.tables.features import FEATURE_DIGEST, retention_us_program
from ctxplane.actors.tables.join import CLAIMS_DIGEST, PINS_DIGEST, ROLES_DIGEST
from ctxplane.actors.tables.ledger import LEDGER_DIGEST
from ctxplane.contracts.canonical import canonical_json
from ctxplane.contracts.timestamps import parse_ts_us
from ctxplane.runtime.store import Fetch, Program

__all__ = ("STATE_QUERIES", "ledger_digest_program", "state_digest_program")

# Table by table, in this order; each family names its columns (actors/tables/).
STATE_QUERIES: tuple[tuple[str, str], ...] = (
    PINS_DIGEST, DEDUPE_DIGEST, ROLES_DIGEST, CLAIMS_DIGEST, *FEATURE_DIGEST,
)


def _retention_cutoff() -> Program[int | None]:
    """The feature retention cut-off implied by the store's own state (None: keep everything).

    Pruning may have removed feature rows at or before ``max feature watermark − retention`` at
    some earlier moment; the digest leaves out everything up to the cut-off implied by the *final*
    watermark, so a store that pruned and one that did not (same events) digest alike.
    """
    retention_us = yield from retention_us_program()
    watermark = yield from max_watermark_program("features")
    if retention_us is None or watermark is None:
        return None
    return parse_ts_us(watermark) - retention_us


def _keep(name: str, row: tuple[object, ...], cutoff: int | None) -> bool:
    if cutoff is None:
        return True
    if name == "feature_raw":
        return row[4] > cutoff  # type: ignore[operator]
    if name == "feature_tiles":
        return row[5] >= cutoff // (row[4] * 1_000_000)  # type: ignore[operator]
    return True


def _digest_tables(queries: tuple[tuple[str, str], ...]) -> Program[str]:
    hasher = hashlib.sha256()
    cutoff = yield from _retention_cutoff()
    for name, sql in queries:
        hasher.update(canonical_json(name))
        rows = yield Fetch(sql)
        rows = [row for row in rows if _keep(name, row, cutoff)]
        # Sorted here, not by ORDER BY: text collation differs between backends and locales.
        for line in sorted(canonical_json(list(row)) for row in rows):
            hasher.update(line)
            hasher.update(b"\n")
    return hasher.hexdigest()


def state_digest_program() -> Program[str]:
    return (yield from _digest_tables(STATE_QUERIES))


def ledger_digest_program() -> Program[str]:
    return (yield from _digest_tables((LEDGER_DIGEST,)))
