"""Timestamps and window plans (contracts/features/windows.py): no I/O, no event loop."""

from __future__ import annotations

import bisect
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ctxplane.contracts.features import (
    DAY_US,
    HOUR_US,
    MINUTE_US,
    WindowPlan,
    decompose,
    format_ts_us,
    parse_ts_us,
    tile_id,
    tile_span_us,
)

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
T0 = parse_ts_us("2026-02-01T00:00:00.000000Z")  # a day boundary

# --------------------------------------------------------------------------------------------
# parse_ts_us / format_ts_us
# --------------------------------------------------------------------------------------------


def test_parse_known_values() -> None:
    assert parse_ts_us("1970-01-01T00:00:00.000000Z") == 0
    assert parse_ts_us("1970-01-01T00:00:00.000001Z") == 1
    assert parse_ts_us("1969-12-31T23:59:59.999999Z") == -1
    assert parse_ts_us("2026-02-07T05:00:01.000123Z") == 1_770_440_401_000_123
    assert parse_ts_us("2024-02-29T12:00:00.000000Z") - parse_ts_us(
        "2024-02-28T12:00:00.000000Z"
    ) == DAY_US


@pytest.mark.parametrize(
    "text",
    [
        "2026-02-07T05:00:01Z",  # no fraction
        "2026-02-07T05:00:01.123Z",  # 3 digits
        "2026-02-07T05:00:01.1234567Z",  # 7 digits
        "2026-02-07T05:00:01.000123+00:00",
        "2026-02-07T05:00:01.000123",
        "2026-02-07t05:00:01.000123Z",
        "2026-02-07T05:00:01.000123z",
        "2026-02-07 05:00:01.000123Z",
        " 2026-02-07T05:00:01.000123Z",
        "2026-02-07T05:00:01.000123Z\n",
        "2026-02-30T05:00:01.000123Z",  # no such day
        "2025-02-29T05:00:01.000123Z",  # not a leap year
        "2026-13-07T05:00:01.000123Z",
        "2026-00-07T05:00:01.000123Z",
        "2026-02-07T24:00:00.000000Z",
        "2026-02-07T05:60:01.000123Z",
        "2026-02-07T05:00:60.000000Z",  # no leap seconds
        "0000-01-01T00:00:00.000000Z",
        "2026-02-07T05:00:01.00012３Z",  # non-ASCII digit
        "",
    ],
)
def test_parse_is_strict(text: str) -> None:
    with pytest.raises(ValueError):
        parse_ts_us(text)


@pytest.mark.parametrize("value", [None, 12, 1.5, b"2026-02-07T05:00:01.000123Z"])
def test_parse_rejects_non_strings_with_value_error(value: object) -> None:
    with pytest.raises(ValueError, match="must be a string"):
        parse_ts_us(value)  # type: ignore[arg-type]


def test_format_rejects_non_int_and_out_of_range() -> None:
    with pytest.raises(TypeError):
        format_ts_us(True)
    with pytest.raises(TypeError):
        format_ts_us(1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        format_ts_us(parse_ts_us("9999-12-31T23:59:59.999999Z") + 1)


@settings(max_examples=150)
@given(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)))
def test_round_trip_against_datetime(dt: datetime) -> None:
    aware = dt.replace(tzinfo=timezone.utc)
    text = f"{dt.year:04d}-" + aware.strftime("%m-%dT%H:%M:%S.%fZ")  # %Y is unpadded < 1000
    us = parse_ts_us(text)
    assert us == (aware - EPOCH) // timedelta(microseconds=1)
    assert format_ts_us(us) == text


@given(st.integers(min_value=-(10**16), max_value=10**17))
def test_format_parse_inverse(us: int) -> None:
    assert parse_ts_us(format_ts_us(us)) == us


# --------------------------------------------------------------------------------------------
# tile convention
# --------------------------------------------------------------------------------------------


def test_tile_convention_is_left_open() -> None:
    # An event exactly on a boundary belongs to the tile that ends there.
    assert tile_id(T0, 60) == T0 // MINUTE_US - 1
    assert tile_id(T0 + 1, 60) == T0 // MINUTE_US
    assert tile_id(T0 + MINUTE_US, 60) == T0 // MINUTE_US
    lo, hi = tile_span_us(3600, tile_id(T0 + 5, 3600))
    assert (lo, hi) == (T0, T0 + HOUR_US)
    for level in (60, 3600, 86400):
        for ts in (T0 - 1, T0, T0 + 1, T0 + 12_345_678_901):
            lo, hi = tile_span_us(level, tile_id(ts, level))
            assert lo < ts <= hi


# --------------------------------------------------------------------------------------------
# decompose: exact partition, largest tiles
# --------------------------------------------------------------------------------------------


def _pieces(plan: WindowPlan) -> list[tuple[int, int, int]]:
    """All pieces as (lo, hi, level) with level 0 for raw."""
    out = [(lo, hi, 0) for lo, hi in plan.raw]
    for level, first, last in plan.tiles:
        assert first <= last
        for k in range(first, last + 1):
            lo, hi = tile_span_us(level, k)
            out.append((lo, hi, level))
    return sorted(out)


def _assert_exact_partition(a: int, b: int, plan: WindowPlan) -> None:
    assert (plan.start_us, plan.end_us) == (a, b)
    pieces = _pieces(plan)
    if b <= a:
        assert pieces == []
        return
    # Sorted, non-empty, contiguous pieces from a to b: disjoint and covering (a, b] exactly.
    assert pieces[0][0] == a
    assert pieces[-1][1] == b
    for (_lo, hi, _), (nlo, _, _) in zip(pieces, pieces[1:], strict=False):
        assert hi == nlo
    for lo, hi, _ in pieces:
        assert lo < hi
    # Sampled instants, boundaries included: each in (a, b] lies in exactly one piece.
    samples = {a - 1, a, a + 1, b - 1, b, b + 1, (a + b) // 2}
    for lo, hi, _ in pieces:
        samples.update((lo, lo + 1, hi, hi + 1))
    his = [hi for _, hi, _ in pieces]
    for t in samples:
        # Pieces are sorted and contiguous, so only the first piece ending at or after t can hold
        # it; count holders there and in its neighbours to catch overlaps too.
        i = bisect.bisect_left(his, t)
        n = sum(1 for lo, hi, _ in pieces[max(0, i - 1) : i + 2] if lo < t <= hi)
        assert n == (1 if a < t <= b else 0), (t, n)


def _assert_largest_tiles(plan: WindowPlan) -> None:
    """No piece could have been covered by a bigger one: raw pieces never contain a whole aligned
    minute, minute tiles never all 60 of one hour, hour tiles never all 24 of one day."""
    assert plan.raw_span_us() < 2 * MINUTE_US
    for lo, hi in plan.raw:
        first_boundary = -((-lo) // MINUTE_US) * MINUTE_US
        assert first_boundary + MINUTE_US > hi
    for level, unit in ((60, HOUR_US), (3600, DAY_US)):
        per_big = unit // (level * 1_000_000)
        buckets: dict[int, int] = {}
        for lvl, first, last in plan.tiles:
            if lvl == level:
                for k in range(first, last + 1):
                    buckets[k // per_big] = buckets.get(k // per_big, 0) + 1
        assert all(n < per_big for n in buckets.values())


_boundaryish = st.one_of(
    st.integers(min_value=-3, max_value=3).flatmap(
        lambda d: st.sampled_from([MINUTE_US, HOUR_US, DAY_US]).flatmap(
            lambda unit: st.integers(min_value=0, max_value=12 * DAY_US // unit).map(
                lambda k: T0 + k * unit + d
            )
        )
    ),
    st.integers(min_value=T0, max_value=T0 + 12 * DAY_US),
)


@settings(max_examples=200)
@given(_boundaryish, _boundaryish)
def test_decompose_partitions_exactly(x: int, y: int) -> None:
    a, b = min(x, y), max(x, y)
    plan = decompose(a, b)
    _assert_exact_partition(a, b, plan)
    _assert_largest_tiles(plan)


@settings(max_examples=150)
@given(
    _boundaryish,
    st.sampled_from([1, 2, 999_999, MINUTE_US - 1, MINUTE_US, MINUTE_US + 1, 2 * MINUTE_US,
                     HOUR_US, DAY_US, 7 * DAY_US, 8 * DAY_US]),
)
def test_decompose_short_and_standard_windows(t: int, d: int) -> None:
    plan = decompose(t - d, t)
    _assert_exact_partition(t - d, t, plan)
    _assert_largest_tiles(plan)


@settings(max_examples=150)
@given(_boundaryish)
def test_seven_day_plan_is_bounded(t: int) -> None:
    plan = decompose(t - 7 * DAY_US, t)
    assert plan.tile_count() <= 7 + 2 * 23 + 2 * 59
    assert len(plan.tiles) <= 5
    assert len(plan.raw) <= 2
    by_level = {60: 0, 3600: 0, 86400: 0}
    for level, first, last in plan.tiles:
        by_level[level] += last - first + 1
    assert by_level[86400] <= 7 and by_level[3600] <= 2 * 23 and by_level[60] <= 2 * 59


def test_aligned_windows_need_no_raw() -> None:
    for d in (HOUR_US, DAY_US, 7 * DAY_US):
        plan = decompose(T0 + 5 * HOUR_US - d, T0 + 5 * HOUR_US)
        assert plan.raw == ()
    plan = decompose(T0 - 7 * DAY_US, T0)
    assert plan.tiles == ((86400, T0 // DAY_US - 7, T0 // DAY_US - 1),)


def test_window_inside_one_minute_is_all_raw() -> None:
    plan = decompose(T0 + 10, T0 + 20)
    assert plan.raw == ((T0 + 10, T0 + 20),) and plan.tiles == ()
    # Straddling a minute boundary with no whole minute: still raw, one piece.
    plan = decompose(T0 - 5, T0 + MINUTE_US - 1)
    assert plan.raw == ((T0 - 5, T0 + MINUTE_US - 1),) and plan.tiles == ()


def test_empty_and_inverted_windows() -> None:
    assert decompose(T0, T0) == WindowPlan(T0, T0, (), ())
    assert decompose(T0 + 1, T0).raw == () and decompose(T0 + 1, T0).tiles == ()
