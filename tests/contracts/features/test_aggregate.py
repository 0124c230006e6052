"""Exact amounts, the Agg monoid and served values (contracts/features/aggregate.py)."""

from __future__ import annotations

from decimal import Decimal

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ctxplane.contracts.features import (
    AGGREGATIONS,
    MAX_ABS_AMOUNT,
    Agg,
    parse_amount,
    parse_ts_us,
    present,
    units_to_number,
)


@pytest.mark.parametrize(
    ("value", "units"),
    [
        (12, 12_000_000),
        (0, 0),
        (-3, -3_000_000),
        (12.5, 12_500_000),
        (0.1, 100_000),
        ("12.50", 12_500_000),
        ("  12.50\n", 12_500_000),
        ("-0.000001", -1),
        ("+7", 7_000_000),
        ("1e3", 1_000_000_000),
        (".5", 500_000),
        ("5.", 5_000_000),
        ("0.0000005", 0),  # half-even: ties go to the even neighbour
        ("0.0000015", 2),
        ("0.0000025", 2),
        ("-0.0000025", -2),
        ("0.00000051", 1),
        (12.0000005, 12_000_000),  # a float goes through its repr, like the same digits as text
        ("12.0000005", 12_000_000),
        (Decimal("1.2345675"), 1_234_568),
        (MAX_ABS_AMOUNT, MAX_ABS_AMOUNT * 1_000_000),
        (str(MAX_ABS_AMOUNT), MAX_ABS_AMOUNT * 1_000_000),
    ],
)
def test_parse_amount_values(value: object, units: int) -> None:
    assert parse_amount(value) == units


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        float("nan"),
        float("inf"),
        float("-inf"),
        "NaN",
        "nan",
        "Infinity",
        "-inf",
        "",
        "   ",
        "abc",
        "12,50",
        "1_000",
        "١٢",  # Arabic-Indic digits: Decimal() would accept them
        "0x10",
        "1e999999",
        MAX_ABS_AMOUNT + 1,
        -(MAX_ABS_AMOUNT + 1),
        1e300,
        "9" * 70,
        [1],
        {"amount": 1},
        b"12",
        Decimal("NaN"),
    ],
)
def test_parse_amount_rejects(value: object) -> None:
    assert parse_amount(value) is None


@given(st.decimals(min_value=-MAX_ABS_AMOUNT, max_value=MAX_ABS_AMOUNT, places=6))
def test_six_decimal_amounts_are_exact_as_text(d: Decimal) -> None:
    assert parse_amount(str(d)) == int(d * 1_000_000)


@given(st.floats(min_value=-MAX_ABS_AMOUNT, max_value=MAX_ABS_AMOUNT))
def test_float_and_its_text_agree(x: float) -> None:
    assert parse_amount(x) == parse_amount(repr(x))


@given(st.integers(-(10**16), 10**16), st.integers(0, 7))
def test_short_floats_and_their_text_agree(units: int, places: int) -> None:
    # Floats written with at most six decimals take a shortcut past Decimal: the same units, the same bound.
    x = units / 10**places
    assert parse_amount(x) == parse_amount(repr(x))


_amount = st.none() | st.integers(min_value=-(10**15), max_value=10**15)
_aggs = st.lists(st.tuples(st.integers(min_value=0, max_value=10**17), _amount), max_size=6).map(
    Agg.of_events
)


@given(_aggs, _aggs, _aggs)
def test_merge_is_a_commutative_monoid(x: Agg, y: Agg, z: Agg) -> None:
    assert x.merge(y) == y.merge(x)
    assert x.merge(y).merge(z) == x.merge(y.merge(z))
    assert x.merge(Agg.EMPTY) == x == Agg.EMPTY.merge(x)


@given(st.lists(st.tuples(st.integers(min_value=0, max_value=10**17), _amount), max_size=20))
def test_of_events_equals_folded_merge(events: list[tuple[int, int | None]]) -> None:
    folded = Agg.EMPTY
    for ts, amount in events:
        folded = folded.merge(Agg.of_event(ts, amount))
    assert folded == Agg.of_events(events)
    assert folded.amount_count <= folded.count
    assert (folded.amount_min is None) == (folded.amount_count == 0)
    assert (folded.last_ts_us is None) == (folded.count == 0)


def test_present_empty_window() -> None:
    out = present(Agg.EMPTY, sorted(AGGREGATIONS))
    assert out == {
        "amount_max": None,
        "amount_min": None,
        "amount_sum": 0.0,
        "count": 0,
        "event_count": 0,
        "last_event_ts_utc": None,
    }


def test_present_values_and_alias() -> None:
    ts = parse_ts_us("2026-02-07T05:00:01.000123Z")
    agg = Agg.of_events(
        [(ts - 5, parse_amount("12.50")), (ts, parse_amount(-0.25)), (ts - 9, None)]
    )
    out = present(agg, ["event_count", "count", "amount_sum", "amount_min", "amount_max",
                        "last_event_ts_utc"])
    assert out == {
        "event_count": 3,
        "count": 3,
        "amount_sum": 12.25,
        "amount_min": -0.25,
        "amount_max": 12.5,
        "last_event_ts_utc": "2026-02-07T05:00:01.000123Z",
    }
    assert list(out) == ["event_count", "count", "amount_sum", "amount_min", "amount_max",
                         "last_event_ts_utc"]
    with pytest.raises(ValueError, match="unknown aggregation 'avg'"):
        present(agg, ["avg"])


@given(st.integers(min_value=-(10**15) + 1, max_value=10**15 - 1))
def test_served_numbers_are_the_exact_six_decimal_value(units: int) -> None:
    # Below 10**9 (15 significant digits) the served JSON text is the exact decimal value: no
    # float noise. Beyond, it is the nearest double: still the same bytes for the same units.
    text = orjson.dumps(units_to_number(units)).decode()
    assert Decimal(text) == Decimal(units).scaleb(-6)


def test_sum_is_order_independent_where_floats_are_not() -> None:
    amounts = ["0.1", "0.2", "0.3", "1e9", "-1e9"]
    forward = sum(parse_amount(a) or 0 for a in amounts)
    backward = sum(parse_amount(a) or 0 for a in reversed(amounts))
    assert forward == backward == 600_000
    assert sum(float(a) for a in amounts) != sum(float(a) for a in reversed(amounts))
