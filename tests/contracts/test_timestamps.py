"""Request instants: any RFC 3339 form is accepted and means one microsecond; answers are canonical."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ctxplane.contracts.timestamps import canonical_instant, format_ts_us, parse_instant_us, parse_ts_us

CANONICAL = "2026-02-07T05:03:00.000000Z"


@pytest.mark.parametrize("spelling", [
    "2026-02-07T05:03:00Z", "2026-02-07T05:03:00.0Z", "2026-02-07T05:03:00.000000000Z", "2026-02-07t05:03:00z",
    "2026-02-07T06:03:00+01:00", "2026-02-07T00:33:00-04:30", "2026-02-07T05:03:00-00:00",
    "2026-02-08T04:02:00+22:59", "2026-02-07T05:03:00.000000999Z",  # sub-microsecond digits are floored
])
def test_every_rfc3339_spelling_of_an_instant_is_that_instant(spelling: str) -> None:
    assert canonical_instant(spelling) == CANONICAL


@pytest.mark.parametrize(("spelling", "canonical"), [
    ("2026-02-07T05:03:00.5Z", "2026-02-07T05:03:00.500000Z"),
    ("2026-02-07T05:03:00.123456789+00:00", "2026-02-07T05:03:00.123456Z"),
    ("2026-01-01T00:30:00+01:00", "2025-12-31T23:30:00.000000Z"),  # across a year
    ("2024-02-29T23:59:59.999999999-01:00", "2024-03-01T00:59:59.999999Z"),
])
def test_fractions_and_offsets_land_on_the_right_microsecond(spelling: str, canonical: str) -> None:
    assert canonical_instant(spelling) == canonical


@pytest.mark.parametrize("value", [
    "2026-02-07 05:03:00Z", "2026-02-07T05:03Z", "2026-02-07T05:03:00", "2026-02-07T05:03:00.Z",
    "2026-02-07T05:03:00.1234567890Z", "2026-02-07T05:03:00+0100", "2026-02-07T05:03:00+24:00",
    "2026-02-07T05:03:60Z", "2026-02-30T05:03:00Z", "2026-02-07T24:00:00Z", " 2026-02-07T05:03:00Z",
    "2026-02-07T05:03:00Z\n", "0001-01-01T00:30:00+01:00", "١٢٣٤-02-07T05:03:00Z", 1770440580, None,
])
def test_anything_else_is_refused_with_the_value_quoted(value: object) -> None:
    with pytest.raises(ValueError, match="timestamp"):
        parse_instant_us(value)  # type: ignore[arg-type]


@given(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)),
       st.integers(-23 * 60 - 59, 23 * 60 + 59), st.integers(0, 999))
def test_an_instant_parses_to_the_same_microsecond_whatever_its_offset_and_precision(
    instant: datetime, offset_min: int, nanos: int
) -> None:
    canonical = _spell(instant, "Z")
    local = instant.astimezone(timezone(timedelta(minutes=offset_min)))
    sign, minutes = ("-" if offset_min < 0 else "+"), abs(offset_min)
    spelled = _spell(local, f"{nanos:03d}{sign}{minutes // 60:02d}:{minutes % 60:02d}")
    assert parse_instant_us(spelled) == parse_ts_us(canonical)
    assert format_ts_us(parse_instant_us(canonical)) == canonical  # the canonical form is a fixed point


def _spell(t: datetime, suffix: str) -> str:
    # Not strftime: %Y does not zero-pad years below 1000 on every platform.
    return f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}.{t.microsecond:06d}{suffix}"
