"""Tiles against a brute-force oracle (contracts/features/tiles.py).

A tiny in-memory "store" applies tile deltas with the SQL upsert semantics (written here
independently of the library), in random batch splits and orders; windows evaluated from the plan's
raw ranges and tile ranges must equal a brute-force fold over the events with ``t − d < ts ≤ t``.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ctxplane.contracts.features import (
    DAY_US,
    HOUR_US,
    MINUTE_US,
    Agg,
    RawRow,
    RawValue,
    TileRow,
    TileValue,
    TrafficEvent,
    WindowPlan,
    as_of_beyond_retention,
    decompose,
    evaluate,
    first_kept_tile,
    merge_tile_row,
    parse_amount,
    parse_ts_us,
    prune_before,
    tile_deltas,
)

T0 = parse_ts_us("2026-02-01T00:00:00.000000Z")
SPAN = 10 * DAY_US
KEYS = [("flow_id", "f1"), ("flow_id", "f2"), ("device_id", "d1")]

# --------------------------------------------------------------------------------------------
# strategies
# --------------------------------------------------------------------------------------------

_on_boundary = st.tuples(
    st.sampled_from([MINUTE_US, HOUR_US, DAY_US]),
    st.integers(min_value=0, max_value=10),
    st.integers(min_value=-1, max_value=1),
).flatmap(
    lambda t: st.integers(min_value=0, max_value=SPAN // t[0]).map(lambda k: T0 + k * t[0] + t[2])
)
_timestamp = st.one_of(
    _on_boundary,
    st.integers(min_value=T0, max_value=T0 + SPAN),
    # clusters inside a few minutes, so several events share minute tiles and raw edges
    st.integers(min_value=0, max_value=3 * MINUTE_US).map(lambda x: T0 + 2 * DAY_US + x),
)
_raw_amount = st.one_of(
    st.none(),
    st.integers(min_value=-1000, max_value=10**6),
    st.decimals(min_value=-1000, max_value=10**6, places=6).map(str),
    st.floats(min_value=-1000, max_value=10**6),
    st.sampled_from(["abc", "NaN", True, "12.50", "0.0000005"]),
)
_event = st.tuples(st.sampled_from(KEYS), _timestamp, _raw_amount).map(
    lambda e: (e[0][0], e[0][1], e[1], parse_amount(e[2]))
)


# --------------------------------------------------------------------------------------------
# a miniature store with the documented SQL upsert semantics
# --------------------------------------------------------------------------------------------


def _least(x: int | None, y: int | None) -> int | None:  # PostgreSQL LEAST: skips NULLs
    return y if x is None else x if y is None else min(x, y)


def _greatest(x: int | None, y: int | None) -> int | None:
    return y if x is None else x if y is None else max(x, y)


class MiniStore:
    def __init__(self) -> None:
        self.raw: list[RawRow] = []
        self.tiles: dict[tuple[str, str, int, int], TileRow] = {}

    def apply(self, events: list[TrafficEvent]) -> None:
        batch = tile_deltas(events)
        self.raw.extend(batch.raw_rows)
        keys = [row[:4] for row in batch.tile_rows]
        assert len(keys) == len(set(keys)), "deltas of one tile must be merged inside a batch"
        assert keys == sorted(keys)
        for d in batch.tile_rows:
            old = self.tiles.get(d[:4])
            if old is None:
                self.tiles[d[:4]] = d
            else:
                self.tiles[d[:4]] = (
                    *d[:4],
                    old[4] + d[4],
                    old[5] + d[5],
                    old[6] + d[6],
                    _least(old[7], d[7]),
                    _greatest(old[8], d[8]),
                    max(old[9], d[9]),
                )
                assert merge_tile_row(old, d) == self.tiles[d[:4]]

    def prune(self, cutoff: int) -> None:
        self.raw = [r for r in self.raw if r[2] > cutoff]
        self.tiles = {
            k: v for k, v in self.tiles.items() if k[3] >= first_kept_tile(cutoff, k[2])
        }

    def read(
        self, key: tuple[str, str], plan: WindowPlan
    ) -> tuple[list[RawValue], list[TileValue]]:
        """What the store's queries return: exactly the plan's ranges for one key."""
        raw = [
            (r[2], r[3])
            for r in self.raw
            if r[:2] == key and any(lo < r[2] <= hi for lo, hi in plan.raw)
        ]
        tiles = []
        for level, first, last in plan.tiles:
            if last - first < 400:  # look tiles up one by one, like an index range scan
                for k in range(first, last + 1):
                    row = self.tiles.get((*key, level, k))
                    if row is not None:
                        tiles.append(row[2:])
            else:
                tiles.extend(
                    row[2:]
                    for k, row in self.tiles.items()
                    if k[:3] == (*key, level) and first <= k[3] <= last
                )
        return raw, tiles

    def read_all(self, key: tuple[str, str]) -> tuple[list[RawValue], list[TileValue]]:
        """An over-fetching store: every row of the key."""
        raw = [(r[2], r[3]) for r in self.raw if r[:2] == key]
        tiles = [row[2:] for k, row in self.tiles.items() if k[:2] == key]
        return raw, tiles


def _brute(events: list[TrafficEvent], key: tuple[str, str], a: int, b: int) -> Agg:
    return Agg.of_events((e[2], e[3]) for e in events if e[:2] == key and a < e[2] <= b)


def _split_apply(store: MiniStore, events: list[TrafficEvent], rnd: random.Random) -> None:
    order = list(events)
    rnd.shuffle(order)
    i = 0
    while i < len(order):
        n = rnd.randint(1, max(1, len(order) // 2))
        store.apply(order[i : i + n])
        i += n


# --------------------------------------------------------------------------------------------
# the oracle
# --------------------------------------------------------------------------------------------


_UNITS = (MINUTE_US, HOUR_US, DAY_US)
_DURATIONS = (
    1, 2, MINUTE_US - 1, MINUTE_US, MINUTE_US + 1, HOUR_US, DAY_US, 7 * DAY_US, 8 * DAY_US,
)


def _near_offset(rnd: random.Random) -> int:
    """An offset that moves an instant across 0, 1 or several minute/hour/day boundaries."""
    kind = rnd.randrange(4)
    if kind == 0:
        return rnd.choice((-1, 0, 1))
    return rnd.randrange(3 * _UNITS[kind - 1] + 1)


def _random_query(rnd: random.Random, event_times: list[int]) -> tuple[int, int]:
    """(as_of, duration): as_of on/around a boundary, anywhere, or just after an event; the
    window's exclusive start standard, random, or on/just before an event."""
    kind = rnd.randrange(3)
    if kind == 0:
        unit = rnd.choice(_UNITS)
        t = T0 + rnd.randrange(SPAN // unit + 1) * unit + rnd.choice((-1, 0, 1))
    elif kind == 1:
        t = rnd.randrange(T0 - DAY_US, T0 + SPAN + DAY_US)
    else:
        t = rnd.choice(event_times) + _near_offset(rnd)
    kind = rnd.randrange(3)
    if kind == 0:
        d = rnd.choice(_DURATIONS)
    elif kind == 1:
        d = rnd.randrange(1, 8 * DAY_US + 1)
    else:
        d = max(1, t - (rnd.choice(event_times) - _near_offset(rnd)))
    return t, d


@settings(max_examples=150, deadline=None)
@given(st.lists(_event, min_size=0, max_size=60), st.randoms(use_true_random=False))
def test_windows_match_brute_force(events: list[TrafficEvent], rnd: random.Random) -> None:
    store = MiniStore()
    _split_apply(store, events, rnd)

    # Tile state does not depend on batch split or order.
    one_batch = MiniStore()
    one_batch.apply(events)
    assert store.tiles == one_batch.tiles

    event_times = [e[2] for e in events] or [T0]
    for _ in range(20):
        key = rnd.choice(KEYS)
        t, d = _random_query(rnd, event_times)
        plan = decompose(t - d, t)
        expected = _brute(events, key, t - d, t)
        assert evaluate(plan, *store.read(key, plan)) == expected, (t, d, plan)
        # Rows outside the plan are ignored: over-fetching cannot double count.
        assert evaluate(plan, *store.read_all(key)) == expected


@pytest.mark.parametrize("seed", [1, 2])
def test_windows_match_brute_force_around_every_event(seed: int) -> None:
    """Systematic companion of the property test: for every event, windows ending just before,
    on and after it, and at each distance that puts it in a raw edge, a minute rim, an hour rim or
    a day tile, with starts likewise placed on and around events."""
    rnd = random.Random(seed)
    events: list[TrafficEvent] = []
    for _ in range(100):
        key = rnd.choice(KEYS)
        ts = rnd.choice(
            [
                T0 + rnd.randrange(SPAN),
                T0 + rnd.randrange(SPAN // MINUTE_US) * MINUTE_US + rnd.choice([-1, 0, 1]),
                T0 + 3 * DAY_US + rnd.randrange(5 * MINUTE_US),
            ]
        )
        events.append((*key, ts, rnd.choice([None, rnd.randrange(-10**7, 10**9)])))
    store = MiniStore()
    _split_apply(store, events, rnd)
    offsets = [-1, 0, 1, MINUTE_US - 1, MINUTE_US, MINUTE_US + 1, 2 * MINUTE_US + 7,
               HOUR_US + 1, HOUR_US + MINUTE_US + 1, DAY_US + HOUR_US + MINUTE_US + 1]
    checked = 0
    for ev in events:
        key = (ev[0], ev[1])
        for off in offsets:
            t = ev[2] + off + rnd.randrange(2)
            for d in (HOUR_US, DAY_US, 7 * DAY_US, max(1, off + 1), rnd.randrange(1, 8 * DAY_US)):
                plan = decompose(t - d, t)
                assert evaluate(plan, *store.read(key, plan)) == _brute(events, key, t - d, t), (
                    t,
                    d,
                )
                checked += 1
    assert checked == 100 * len(offsets) * 5


@settings(max_examples=50, deadline=None)
@given(
    st.lists(_event, min_size=1, max_size=60),
    st.integers(min_value=0, max_value=SPAN),
    st.sampled_from([HOUR_US, DAY_US, 7 * DAY_US]),
    st.sampled_from([0, 1, MINUTE_US, HOUR_US]),
    st.randoms(use_true_random=False),
)
def test_windows_inside_retention_stay_exact_after_pruning(
    events: list[TrafficEvent], wm_offset: int, max_ttl: int, grace: int, rnd: random.Random
) -> None:
    store = MiniStore()
    store.apply(events)
    watermark = T0 + wm_offset
    cutoff = prune_before(watermark, max_ttl, grace)
    store.prune(cutoff)
    event_times = [e[2] for e in events]
    for _ in range(20):
        key = rnd.choice(KEYS)
        t, d = _random_query(rnd, event_times)
        if rnd.randrange(2):  # also windows starting on or just after the cut-off
            d = t - cutoff - rnd.choice((0, 0, 1, MINUTE_US))
            if d <= 0:
                continue
        plan = decompose(t - d, t)
        got = evaluate(plan, *store.read(key, plan))
        if not as_of_beyond_retention(t, d, cutoff):
            assert got == _brute(events, key, t - d, t), (t, d, cutoff)
    # The window that starts exactly at the cut-off is still answerable.
    assert not as_of_beyond_retention(cutoff + max_ttl, max_ttl, cutoff)
    assert as_of_beyond_retention(cutoff + max_ttl - 1, max_ttl, cutoff)


# --------------------------------------------------------------------------------------------
# examples
# --------------------------------------------------------------------------------------------


def test_hot_key_batch_is_three_upserts() -> None:
    ts = [T0 + MINUTE_US + i for i in range(1, 1001)]  # 1000 events in one minute tile
    batch = tile_deltas([("flow_id", "hot", t, 1_000_000) for t in ts])
    assert len(batch.raw_rows) == 1000
    assert [row[2] for row in batch.tile_rows] == [60, 3600, 86400]
    minute = batch.tile_rows[0]
    assert minute == ("flow_id", "hot", 60, (T0 + MINUTE_US) // MINUTE_US, 1000, 10**9, 1000,
                      1_000_000, 1_000_000, ts[-1])


def test_tile_row_layout_and_null_amounts() -> None:
    batch = tile_deltas([("ip_id", "1.2.3.4", T0, None), ("ip_id", "1.2.3.4", T0 - 5, None)])
    assert batch.raw_rows == [("ip_id", "1.2.3.4", T0, None), ("ip_id", "1.2.3.4", T0 - 5, None)]
    # Both events end the minute/hour/day that ends at T0 (left-open tiles).
    assert batch.tile_rows == [
        ("ip_id", "1.2.3.4", 60, T0 // MINUTE_US - 1, 2, 0, 0, None, None, T0),
        ("ip_id", "1.2.3.4", 3600, T0 // HOUR_US - 1, 2, 0, 0, None, None, T0),
        ("ip_id", "1.2.3.4", 86400, T0 // DAY_US - 1, 2, 0, 0, None, None, T0),
    ]


def test_empty_window_and_boundaries() -> None:
    events: list[TrafficEvent] = [("flow_id", "f", T0, 5), ("flow_id", "f", T0 + HOUR_US, 7)]
    store = MiniStore()
    store.apply(events)
    key = ("flow_id", "f")

    def window(a: int, b: int) -> Agg:
        plan = decompose(a, b)
        return evaluate(plan, *store.read(key, plan))

    assert window(T0, T0 + HOUR_US) == Agg(1, 7, 1, 7, 7, T0 + HOUR_US)  # T0 excluded, end included
    assert window(T0 - 1, T0 + HOUR_US) == Agg(2, 12, 2, 5, 7, T0 + HOUR_US)
    assert window(T0 + 1, T0 + HOUR_US - 1) is Agg.EMPTY


def test_merge_tile_row_refuses_different_tiles() -> None:
    a = tile_deltas([("flow_id", "f", T0, 1)]).tile_rows[0]
    b = tile_deltas([("flow_id", "g", T0, 1)]).tile_rows[0]
    with pytest.raises(ValueError, match="cannot merge"):
        merge_tile_row(a, b)


def test_retention_helpers() -> None:
    assert prune_before(10 * DAY_US, 7 * DAY_US, HOUR_US) == 3 * DAY_US - HOUR_US
    with pytest.raises(ValueError):
        prune_before(0, -1, 0)
    # Tile k covers (k·L, (k+1)·L]: the tile ending exactly at the cut-off may go, the next stays.
    assert first_kept_tile(DAY_US, 86400) == 1
    assert first_kept_tile(DAY_US + 1, 86400) == 1
    assert first_kept_tile(DAY_US - 1, 86400) == 0
