"""The semantic state digest and the ledger digest (contracts.md §5), computed from the store alone.

The state digest covers what the planes *mean* — frames (role entries and payload hashes), binding
claims, the dedupe registry, pins, feature raw events and tiles — as canonical rows sorted by key. It
leaves out where events sat on the bus (topic, partition, offset, offset kind) and wall-clock
columns, so the same events give the same digest whatever the batching, restarts, interleaving,
backend or bus.
"""

from __future__ import annotations

import hashlib

from ctxplane.contracts.canonical import canonical_json
from ctxplane.contracts.timestamps import parse_ts_us
from ctxplane.runtime.store import Fetch, Program

__all__ = ("LEDGER_QUERY", "STATE_QUERIES", "ledger_digest_program", "state_digest_program")

STATE_QUERIES: tuple[tuple[str, str], ...] = (
    ("context_pins", "SELECT pins_id, pins_json FROM context_pins"),
    ("intake_dedupe", "SELECT platform_run_id, event_class, event_id, payload_hash, scenario_run_id FROM intake_dedupe"),
    ("join_frame_roles", "SELECT platform_run_id, scenario_run_id, merchant_id, arrival_seq, role, event_id, event_type,"
                         " payload_hash, pins_id FROM join_frame_roles"),
    ("flow_binding_claims", "SELECT platform_run_id, scenario_run_id, flow_id, merchant_id, arrival_seq, event_id,"
                            " event_type, payload_hash, pins_id FROM flow_binding_claims"),
    ("feature_raw", "SELECT platform_run_id, scenario_run_id, key_type, key_id, ts_us, event_id, amount_units"
                    " FROM feature_raw"),
    ("feature_tiles", "SELECT platform_run_id, scenario_run_id, key_type, key_id, level_s, tile_id, event_count,"
                      " amount_count, amount_sum, amount_min, amount_max, last_ts_us FROM feature_tiles"),
)

LEDGER_QUERY = (
    "SELECT plane, reason_code, event_id, event_type, topic, partition_id, source_offset, offset_kind"
    " FROM apply_failures"
)


def _retention_cutoff() -> Program[int | None]:
    """The feature retention cut-off implied by the store's own state (None: keep everything).

    Pruning may have removed feature rows at or before ``max feature watermark − retention`` at
    some earlier moment; the digest leaves out everything up to the cut-off implied by the *final*
    watermark, so a store that pruned and one that did not (same events) digest alike.
    """
    meta = yield Fetch("SELECT meta_value FROM store_meta WHERE meta_key = 'feature_retention_us'")
    wm = yield Fetch("SELECT max(watermark_ts_utc) FROM checkpoints WHERE plane = 'features'")
    if not meta or not wm or wm[0][0] is None:
        return None
    return parse_ts_us(wm[0][0]) - int(meta[0][0])


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
    return (yield from _digest_tables((("apply_failures", LEDGER_QUERY),)))
