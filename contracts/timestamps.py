"""Event time: RFC 3339 UTC strings with exactly six fractional digits, and integer microseconds.

The one place timestamps are parsed and formatted. Strict parsing makes string <-> int a bijection,
so every digest and comparison agrees on what an instant is.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime

__all__ = ("TS_PATTERN", "US_PER_SECOND", "format_ts_us", "now_utc", "parse_ts_us")

US_PER_SECOND = 1_000_000
# Used with fullmatch (``$`` would also accept a trailing newline).
TS_PATTERN = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})\.(\d{6})Z", re.ASCII)
_EPOCH_ORDINAL = 719_163  # date(1970, 1, 1).toordinal()


def parse_ts_us(value: str) -> int:
    """Parse an RFC 3339 UTC timestamp with exactly six fractional digits and ``Z``.

    ``"2026-02-07T05:00:01.000123Z"`` → microseconds since the epoch. Nothing else is accepted:
    no offset other than ``Z``, no lower-case ``t``/``z``, no fewer or more fractional digits, no
    leap second, no surrounding whitespace. Strictness makes the mapping string ↔ int a bijection,
    so every place that digests or compares timestamps agrees.

    Raises:
        ValueError: ``value`` is not a ``str`` in exactly that format, or names a date/time that
            does not exist (``2026-02-30``, ``24:00:00``). The message quotes the value (cut to 64
            characters).
    """
    if type(value) is not str:
        raise ValueError(f"timestamp must be a string, got {type(value).__name__}")
    m = TS_PATTERN.fullmatch(value)
    if m is None:
        raise ValueError(
            f"timestamp {value[:64]!r} is not RFC 3339 UTC with 6 fractional digits "
            "(YYYY-MM-DDTHH:MM:SS.ffffffZ)"
        )
    year, month, day, hh, mm, ss, frac = (int(g) for g in m.groups())
    if hh > 23 or mm > 59 or ss > 59:
        raise ValueError(f"timestamp {value!r} has an invalid time of day")
    try:
        # date() validates month and day-of-month (leap years included) in C.
        days = date(year, month, day).toordinal() - _EPOCH_ORDINAL
    except ValueError:
        raise ValueError(f"timestamp {value!r} names a date that does not exist") from None
    return (((days * 24 + hh) * 60 + mm) * 60 + ss) * US_PER_SECOND + frac


def format_ts_us(ts_us: int) -> str:
    """Format microseconds since the epoch as ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (inverse of
    :func:`parse_ts_us`).

    Raises:
        TypeError: ``ts_us`` is not an ``int`` (``bool`` included).
        ValueError: the instant is outside years 0001…9999.
    """
    if type(ts_us) is not int:
        raise TypeError(f"ts_us must be an int, got {type(ts_us).__name__}")
    seconds, frac = divmod(ts_us, US_PER_SECOND)
    days, secs = divmod(seconds, 86_400)
    try:
        d = date.fromordinal(days + _EPOCH_ORDINAL)
    except (ValueError, OverflowError):
        raise ValueError(f"ts_us {ts_us} is outside years 0001..9999") from None
    hh, rem = divmod(secs, 3600)
    mm, ss = divmod(rem, 60)
    return f"{d.year:04d}-{d.month:02d}-{d.day:02d}T{hh:02d}:{mm:02d}:{ss:02d}.{frac:06d}Z"


def now_utc() -> str:
    """The current wall-clock time in the canonical timestamp form (for ``*_at_utc`` fields)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
