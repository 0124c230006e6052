"""The features family: raw edge rows (``feature_raw``), time tiles (``feature_tiles``) and the
retention keys of ``store_meta`` (migration 0001); their writes and the reads of an answer.

For every new traffic event and every feature key it carries, one raw row (exact window edges) and
merged tile deltas (cheap windows) — commutative upserts, in the apply transaction. Both are staged
once per commit (:class:`~ctxplane.runtime.store.CopyRows`) and written with one set-based
statement each; tile deltas are folded in memory first, so each (key, tile) is upserted once per
commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeAlias

from ctxplane.contracts.features import first_kept_tile, key_tiles
from ctxplane.contracts.features.windows import LEVELS_SECONDS
from ctxplane.contracts.intake import Accepted
from ctxplane.runtime.store import CopyRows, Execute, Fetch, Program, StageTable

__all__ = (
    "CUTOFF_KEY", "FEATURE_DIGEST", "RETENTION_KEY", "FeatureKey", "FeatureTableWriter", "FeatureWriter",
    "key_seen_fetch", "prune_program", "raw_fetch", "retention_meta_program", "retention_us_program", "tiles_fetch",
)

# (platform_run_id, scenario_run_id, key_type, key_id): one feature key of one run.
FeatureKey: TypeAlias = tuple[str, str, str, str]


class FeatureWriter:
    """Plug-in for the feature plane's writes (set by the feature-plane module)."""

    def write(self, events: Sequence[Accepted]) -> Program[None]:  # pragma: no cover - interface
        raise NotImplementedError
        yield  # unreachable: makes this a generator


# store_meta keys.
CUTOFF_KEY = "feature_retention_cutoff_us"
RETENTION_KEY = "feature_retention_us"

STAGE_RAW = StageTable("stage_feature_raw", (
    ("platform_run_id", "TEXT"), ("scenario_run_id", "TEXT"), ("key_type", "TEXT"), ("key_id", "TEXT"),
    ("ts_us", "BIGINT"), ("event_id", "TEXT"), ("amount_units", "BIGINT"),
))
STAGE_TILES = StageTable("stage_feature_tiles", (
    ("platform_run_id", "TEXT"), ("scenario_run_id", "TEXT"), ("key_type", "TEXT"), ("key_id", "TEXT"),
    ("level_s", "INTEGER"), ("tile_id", "BIGINT"), ("event_count", "BIGINT"), ("amount_sum", "BIGINT"),
    ("amount_count", "BIGINT"), ("amount_min", "BIGINT"), ("amount_max", "BIGINT"), ("last_ts_us", "BIGINT"),
))

# ``WHERE true`` before ON CONFLICT: SQLite's parser needs it after INSERT ... SELECT ... FROM t.
_TILE_UPSERT = (
    "INSERT INTO feature_tiles (platform_run_id, scenario_run_id, key_type, key_id, level_s, tile_id, event_count,"
    " amount_sum, amount_count, amount_min, amount_max, last_ts_us)"
    " SELECT platform_run_id, scenario_run_id, key_type, key_id, level_s, tile_id, event_count, amount_sum,"
    " amount_count, amount_min, amount_max, last_ts_us FROM stage_feature_tiles WHERE true"
    " ON CONFLICT (platform_run_id, scenario_run_id, key_type, key_id, level_s, tile_id) DO UPDATE SET"
    " event_count = feature_tiles.event_count + excluded.event_count,"
    " amount_sum = feature_tiles.amount_sum + excluded.amount_sum,"
    " amount_count = feature_tiles.amount_count + excluded.amount_count,"
    # NULL means "no amount seen": min/max skip it (portable, no LEAST/GREATEST/min() differences).
    " amount_min = CASE WHEN excluded.amount_min IS NULL THEN feature_tiles.amount_min"
    "   WHEN feature_tiles.amount_min IS NULL OR excluded.amount_min < feature_tiles.amount_min"
    "   THEN excluded.amount_min ELSE feature_tiles.amount_min END,"
    " amount_max = CASE WHEN excluded.amount_max IS NULL THEN feature_tiles.amount_max"
    "   WHEN feature_tiles.amount_max IS NULL OR excluded.amount_max > feature_tiles.amount_max"
    "   THEN excluded.amount_max ELSE feature_tiles.amount_max END,"
    " last_ts_us = CASE WHEN excluded.last_ts_us > feature_tiles.last_ts_us"
    "   THEN excluded.last_ts_us ELSE feature_tiles.last_ts_us END"
)
_RAW_INSERT = (
    "INSERT INTO feature_raw (platform_run_id, scenario_run_id, key_type, key_id, ts_us, event_id, amount_units)"
    " SELECT platform_run_id, scenario_run_id, key_type, key_id, ts_us, event_id, amount_units"
    " FROM stage_feature_raw WHERE true"
    " ON CONFLICT (platform_run_id, scenario_run_id, key_type, key_id, ts_us, event_id) DO NOTHING"
)
_META_UPSERT = (
    "INSERT INTO store_meta (meta_key, meta_value) VALUES (?, ?)"
    " ON CONFLICT (meta_key) DO UPDATE SET meta_value = excluded.meta_value"
)


class FeatureTableWriter(FeatureWriter):
    """Raw rows for the exact window edges and merged tile deltas, per run: commutative upserts."""


    def write(self, events: Sequence[Accepted]) -> Program[None]:
        # Grouped by (run, key) once: raw rows and tiles both come out in primary-key order —
        # the index inserts then walk their indexes instead of jumping around them, and tiles are
        # locked in one order by concurrent writers — sorting only the keys and each key's events.
        by_key: dict[tuple[str, str, str, str], list[tuple[int, str, int | None]]] = {}
        get = by_key.get
        for v in events:
            value = (v.ts_us, v.event_id, v.amount_units)
            for key_type, key_id in v.feature_keys:
                key = (v.platform_run_id, v.scenario_run_id, key_type, key_id)
                values = get(key)
                if values is None:
                    by_key[key] = [value]
                else:
                    values.append(value)
        if not by_key:
            return
        raw: list[tuple[Any, ...]] = []
        tiles: list[tuple[Any, ...]] = []
        for key in sorted(by_key):
            run, scenario, key_type, key_id = key
            values = by_key[key]
            if len(values) > 1:
                values.sort()
            raw.extend([(run, scenario, key_type, key_id, ts_us, event_id, amount) for ts_us, event_id, amount in values])
            first = len(tiles)
            key_tiles(key_type, key_id, [(ts_us, amount) for ts_us, _event_id, amount in values], tiles)
            tiles[first:] = [(run, scenario, *row) for row in tiles[first:]]
        yield CopyRows(STAGE_RAW, raw)
        yield Execute(_RAW_INSERT)
        yield CopyRows(STAGE_TILES, tiles)
        yield Execute(_TILE_UPSERT)


def retention_meta_program(retention_us: int) -> Program[None]:
    yield Execute(_META_UPSERT, (RETENTION_KEY, str(retention_us)))


def retention_us_program() -> Program[int | None]:
    """The retention the store was last written with (None: never recorded)."""
    rows = yield Fetch("SELECT meta_value FROM store_meta WHERE meta_key = ?", (RETENTION_KEY,))
    return int(rows[0][0]) if rows else None


def prune_program(watermark_us: int, retention_us: int) -> Program[int]:
    """Delete raw rows and tiles wholly older than ``watermark − retention``; record the cut-off."""
    cutoff = watermark_us - retention_us
    rows = yield Fetch("SELECT meta_value FROM store_meta WHERE meta_key = ?", (CUTOFF_KEY,))
    if rows and int(rows[0][0]) >= cutoff:
        return int(rows[0][0])
    yield Execute("DELETE FROM feature_raw WHERE ts_us <= ?", (cutoff,))
    for level in LEVELS_SECONDS:
        yield Execute("DELETE FROM feature_tiles WHERE level_s = ? AND tile_id < ?", (level, first_kept_tile(cutoff, level)))
    yield Execute(_META_UPSERT, (CUTOFF_KEY, str(cutoff)))
    return cutoff


# -- the reads of an answer -----------------------------------------------------------------------
# One index range seek per disjoint range, glued with UNION ALL: an OR of ranges would scan every
# tile of the key (the planner cannot split it on a WITHOUT ROWID key), and disjoint ranges never
# return a row twice (evaluate() must not see one twice). The callers pass disjoint ranges.

_KEY_SCOPE = "platform_run_id = ? AND scenario_run_id = ? AND key_type = ? AND key_id = ?"
_TILE_TERM = (
    "SELECT level_s, tile_id, event_count, amount_sum, amount_count, amount_min, amount_max, last_ts_us"
    f" FROM feature_tiles WHERE {_KEY_SCOPE} AND level_s = ? AND tile_id BETWEEN ? AND ?"
)
_RAW_TERM = f"SELECT ts_us, amount_units FROM feature_raw WHERE {_KEY_SCOPE} AND ts_us > ? AND ts_us <= ?"


def tiles_fetch(key: FeatureKey, spans: Sequence[tuple[int, int, int]]) -> Fetch:
    """The tiles of ``key`` in each ``(level_s, first tile, last tile)`` span (at least one)."""
    params: list[Any] = []
    for level, first, last in spans:
        params += [*key, level, first, last]
    return Fetch(" UNION ALL ".join([_TILE_TERM] * len(spans)), params)


def raw_fetch(key: FeatureKey, spans: Sequence[tuple[int, int]]) -> Fetch:
    """The raw rows of ``key`` in each ``(lo, hi]`` span of ``ts_us`` (at least one)."""
    params: list[Any] = []
    for lo, hi in spans:
        params += [*key, lo, hi]
    return Fetch(" UNION ALL ".join([_RAW_TERM] * len(spans)), params)


def key_seen_fetch(key: FeatureKey, cutoff_us: int | None) -> Fetch:
    """One row when ``key`` has a tile (after the retention cut-off, if any), else none."""
    if cutoff_us is None:
        return Fetch(f"SELECT 1 FROM feature_tiles WHERE {_KEY_SCOPE} LIMIT 1", list(key))
    top = LEVELS_SECONDS[-1]
    return Fetch(f"SELECT 1 FROM feature_tiles WHERE {_KEY_SCOPE} AND tile_id >= ? AND level_s = {top} LIMIT 1",
                 [*key, first_kept_tile(cutoff_us, top)])


# The family's part of the semantic state digest (actors/operate/digest.py).
FEATURE_DIGEST: tuple[tuple[str, str], ...] = (
    ("feature_raw", "SELECT platform_run_id, scenario_run_id, key_type, key_id, ts_us, event_id, amount_units"
                    " FROM feature_raw"),
    ("feature_tiles", "SELECT platform_run_id, scenario_run_id, key_type, key_id, level_s, tile_id, event_count,"
                      " amount_count, amount_sum, amount_min, amount_max, last_ts_us FROM feature_tiles"),
)
