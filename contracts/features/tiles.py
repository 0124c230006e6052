"""Tile deltas for a batch of traffic events, window evaluation, retention cut-offs (pure: no I/O).

The store keeps two tables per run (it adds its own scope columns in front, e.g. the stream and
run ids); the column order below is the tuple order used everywhere here:

* **raw events** — ``RawRow = (key_type, key_id, ts_us, amount_units)``; indexed by
  ``(key_type, key_id, ts_us)``. Read back per key as ``RawValue = (ts_us, amount_units)``.
* **tiles** — ``TileRow = (key_type, key_id, level_seconds, tile_id, count, amount_sum,
  amount_count, amount_min, amount_max, last_ts_us)``; primary key
  ``(key_type, key_id, level_seconds, tile_id)``. Read back per key as ``TileValue = TileRow[2:]``.

Tiles are not per feature group: every group keyed by a key type reads the same tiles, and each
tile carries every aggregate of the vocabulary, so adding a window or an aggregation to the policy
needs no rebuild.

Write amplification. Each event touches three tiles (minute, hour, day). :func:`tile_deltas`
merges all deltas of the same tile inside a batch before they reach SQL, so a hot key costs three
upserts per *batch*, not per event. The upsert is a commutative merge (:func:`merge_tile_row` is
its reference implementation), so the state after a set of batches does not depend on their order
or split. In SQL::

    INSERT INTO tiles (...) VALUES (...)
    ON CONFLICT (key_type, key_id, level_seconds, tile_id) DO UPDATE SET
      count        = count + excluded.count,
      amount_sum   = amount_sum + excluded.amount_sum,
      amount_count = amount_count + excluded.amount_count,
      amount_min   = <min ignoring NULL>(amount_min, excluded.amount_min),
      amount_max   = <max ignoring NULL>(amount_max, excluded.amount_max),
      last_ts_us   = <max>(last_ts_us, excluded.last_ts_us)

``<min ignoring NULL>`` is ``LEAST``/``GREATEST`` on PostgreSQL (they skip NULLs) and
``coalesce(min(a, b), a, b)`` on SQLite (whose scalar ``min``/``max`` return NULL if either
argument is NULL). ``last_ts_us`` is never NULL in a tile.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ctxplane.contracts.features.aggregate import Agg, _max, _min
from ctxplane.contracts.features.windows import (
    LEVELS_SECONDS,
    US_PER_SECOND,
    WindowPlan,
)

__all__ = (
    "RawRow",
    "RawValue",
    "TileBatch",
    "TileRow",
    "TileValue",
    "TrafficEvent",
    "as_of_beyond_retention",
    "evaluate",
    "first_kept_tile",
    "key_tiles",
    "merge_tile_row",
    "prune_before",
    "tile_deltas",
)

#: One decoded traffic event for one key: ``(key_type, key_id, ts_us, amount_units | None)``.
TrafficEvent = tuple[str, str, int, int | None]
#: A raw-event row, same layout as :data:`TrafficEvent`.
RawRow = tuple[str, str, int, int | None]
#: A raw-event row read back for one key: ``(ts_us, amount_units | None)``.
RawValue = tuple[int, int | None]
#: ``(key_type, key_id, level_seconds, tile_id, count, amount_sum, amount_count, amount_min,
#: amount_max, last_ts_us)``.
TileRow = tuple[str, str, int, int, int, int, int, int | None, int | None, int]
#: A tile row read back for one key: ``TileRow[2:]``.
TileValue = tuple[int, int, int, int, int, int | None, int | None, int]

# Ascending, so that emitting per key and level yields the tiles in primary-key order.
_LEVELS: tuple[tuple[int, int], ...] = tuple((s, s * US_PER_SECOND) for s in sorted(LEVELS_SECONDS))


@dataclass(frozen=True, slots=True)
class TileBatch:
    """What one batch of events writes.

    Attributes:
        raw_rows: one :data:`RawRow` per event, in input order (for a plain ``executemany``
            insert).
        tile_rows: one merged :data:`TileRow` per distinct tile touched by the batch, sorted by
            primary key (a deterministic order, and a consistent lock order on PostgreSQL).
    """

    raw_rows: list[RawRow]
    tile_rows: list[TileRow]


def tile_deltas(events: Iterable[TrafficEvent]) -> TileBatch:
    """Turn decoded events into raw rows and per-tile deltas, merging deltas of the same tile.

    Args:
        events: ``(key_type, key_id, ts_us, amount_units | None)`` per event and key (an event
            carrying several key types appears once per key). Deduplication is the caller's job:
            every event given here is counted.

    Returns:
        A :class:`TileBatch`. Applying its ``tile_rows`` with the commutative upsert (see the module
        docstring) in any order and any batch split yields the same tiles.
    """
    raw_rows: list[RawRow] = [(key_type, key_id, ts_us, amount) for key_type, key_id, ts_us, amount in events]
    # Events per key, then tiles per key and level (see key_tiles): the output comes out in
    # primary-key order by sorting the keys and each key's tile ids, not every tile.
    by_key: dict[tuple[str, str], list[tuple[int, int | None]]] = {}
    get = by_key.get
    for key_type, key_id, ts_us, amount in raw_rows:
        values = get((key_type, key_id))
        if values is None:
            by_key[(key_type, key_id)] = [(ts_us, amount)]
        else:
            values.append((ts_us, amount))
    tile_rows: list[TileRow] = []
    for key in sorted(by_key):
        key_tiles(key[0], key[1], by_key[key], tile_rows)
    return TileBatch(raw_rows, tile_rows)


def key_tiles(key_type: str, key_id: str, values: Sequence[tuple[int, int | None]], out: list[TileRow]) -> None:
    """Append to ``out`` the merged tile deltas of one key's events, sorted by (level, tile id).

    ``values`` are ``(ts_us, amount_units | None)`` of every event of the key (counted as given).
    :func:`tile_deltas` is this over every key of a batch in key order; a caller that has its
    events grouped by key already calls it per key.
    """
    append = out.append
    if len(values) == 1:  # the common case for high-cardinality keys: one tile per level
        ts_us, amount = values[0]
        for level_s, level_us in _LEVELS:
            tile_id = (ts_us - 1) // level_us  # see _windows: tile_id
            if amount is None:
                append((key_type, key_id, level_s, tile_id, 1, 0, 0, None, None, ts_us))
            else:
                append((key_type, key_id, level_s, tile_id, 1, amount, 1, amount, amount, ts_us))
        return
    for level_s, level_us in _LEVELS:
        # Accumulator per tile: [count, amount_sum, amount_count, amount_min, amount_max, last_ts_us].
        acc: dict[int, list[Any]] = {}
        for ts_us, amount in values:
            tile_id = (ts_us - 1) // level_us
            a = acc.get(tile_id)
            if a is None:
                if amount is None:
                    acc[tile_id] = [1, 0, 0, None, None, ts_us]
                else:
                    acc[tile_id] = [1, amount, 1, amount, amount, ts_us]
                continue
            a[0] += 1
            if amount is not None:
                a[1] += amount
                a[2] += 1
                amin = a[3]
                if amin is None or amount < amin:
                    a[3] = amount
                amax = a[4]
                if amax is None or amount > amax:
                    a[4] = amount
            if ts_us > a[5]:
                a[5] = ts_us
        for tile_id in sorted(acc):
            v = acc[tile_id]
            append((key_type, key_id, level_s, tile_id, v[0], v[1], v[2], v[3], v[4], v[5]))


def merge_tile_row(stored: TileRow, delta: TileRow) -> TileRow:
    """Reference implementation of the tile upsert: ``stored`` merged with ``delta``.

    Raises:
        ValueError: the two rows are not for the same tile (same first four columns).
    """
    if stored[:4] != delta[:4]:
        raise ValueError(f"cannot merge tile {delta[:4]!r} into tile {stored[:4]!r}")
    last = stored[9] if stored[9] >= delta[9] else delta[9]
    return (
        stored[0],
        stored[1],
        stored[2],
        stored[3],
        stored[4] + delta[4],
        stored[5] + delta[5],
        stored[6] + delta[6],
        _min(stored[7], delta[7]),
        _max(stored[8], delta[8]),
        last,
    )


def evaluate(
    plan: WindowPlan, raw_rows: Iterable[RawValue], tile_rows: Iterable[TileValue]
) -> Agg:
    """The aggregate of one key over the plan's window, from rows the store read for it.

    Args:
        plan: from :func:`~contracts.features.decompose` for the window ``(as_of − d, as_of]``.
        raw_rows: ``(ts_us, amount_units)`` of this key's raw events, at least all those in
            ``plan.raw``.
        tile_rows: ``TileValue`` rows of this key, at least all those in ``plan.tiles``.

    Rows outside the plan are ignored, so the store may over-fetch with coarser predicates (for
    example one query per level spanning all that level's ranges) without double counting; it must
    not under-fetch, nor return the same row twice.

    Returns:
        The exact :class:`Agg` of the events with ``plan.start_us < ts ≤ plan.end_us``
        (``Agg.EMPTY`` if none).
    """
    raw_ranges = plan.raw
    raw = Agg.EMPTY
    if raw_ranges:
        raw = Agg.of_events(
            (ts, amount) for ts, amount in raw_rows if any(lo < ts <= hi for lo, hi in raw_ranges)
        )
    count, amount_sum, amount_count = raw.count, raw.amount_sum, raw.amount_count
    amin, amax, last = raw.amount_min, raw.amount_max, raw.last_ts_us

    tile_ranges = plan.tiles
    if tile_ranges:
        for level_s, tile, t_count, t_sum, t_acount, t_min, t_max, t_last in tile_rows:
            for r_level, first, final in tile_ranges:
                if r_level == level_s and first <= tile <= final:
                    break
            else:
                continue
            count += t_count
            amount_sum += t_sum
            amount_count += t_acount
            if t_min is not None and (amin is None or t_min < amin):
                amin = t_min
            if t_max is not None and (amax is None or t_max > amax):
                amax = t_max
            if last is None or t_last > last:
                last = t_last

    if count == 0:
        return Agg.EMPTY
    return Agg(count, amount_sum, amount_count, amin, amax, last)


def prune_before(watermark_us: int, max_ttl_us: int, grace_us: int) -> int:
    """The retention cut-off: state at or before it may be pruned.

    ``cutoff = watermark − max_ttl − grace``. After pruning at ``cutoff``, raw rows with
    ``ts_us ≤ cutoff`` and tiles with ``tile_id < first_kept_tile(cutoff, level)`` (tiles that end
    at or before ``cutoff``) may be gone; every window starting at or after ``cutoff`` is still
    exact, because it reads only raw rows after its start and tiles that end after its start.

    Raises:
        ValueError: ``max_ttl_us`` or ``grace_us`` is negative.
    """
    if max_ttl_us < 0 or grace_us < 0:
        raise ValueError(f"max_ttl_us ({max_ttl_us}) and grace_us ({grace_us}) must be >= 0")
    return watermark_us - max_ttl_us - grace_us


def first_kept_tile(cutoff_us: int, level_seconds: int) -> int:
    """The smallest tile id of ``level_seconds`` that pruning at ``cutoff_us`` must keep.

    Tile ``k`` covers ``(k·L, (k+1)·L]``; it holds only pruned time iff ``(k+1)·L ≤ cutoff``,
    i.e. ``k < cutoff // L``. A tile straddling the cut-off is kept whole.
    """
    return cutoff_us // (level_seconds * US_PER_SECOND)


def as_of_beyond_retention(as_of_us: int, duration_us: int, cutoff_us: int) -> bool:
    """Whether the window ``(as_of − duration, as_of]`` reaches into pruned time
    (``AS_OF_BEYOND_RETENTION``): true iff its exclusive start is before ``cutoff_us``."""
    return as_of_us - duration_us < cutoff_us
