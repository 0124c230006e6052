"""Event time: RFC 3339 UTC strings with exactly six fractional digits, and integer microseconds.

The one place timestamps are parsed and formatted. Strict parsing makes string <-> int a bijection,
so every digest and comparison agrees on what an instant is. Requests are more forgiving
(:func:`parse_instant_us` takes any RFC 3339 instant); answers always carry the canonical form.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime

__all__ = ("TS_PATTERN", "US_PER_SECOND", "canonical_instant", "format_ts_us", "now_utc", "parse_instant_us", "parse_ts_us")

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


# Any RFC 3339 date-time (section 5.6): "T"/"Z" in either case, 0-9 fractional digits, Z or an offset.
_INSTANT = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:[Zz]|([+-])(\d{2}):(\d{2}))", re.ASCII
)


def parse_instant_us(value: str) -> int:
    """Parse any RFC 3339 instant a client may send into microseconds since the epoch.

    Accepts ``2026-02-07T05:03:00Z``, ``2026-02-07T06:03:00.5+01:00``, ``2026-02-07t05:03:00.123456789z``:
    0 to 9 fractional digits, ``Z`` or a numeric offset (``-00:00`` included). Digits below the
    microsecond are dropped (the instant is floored): event times are whole microseconds, so a window
    ``(t − d, t]`` holds exactly the same events at ``t`` and at ``t`` floored.

    Raises:
        ValueError: not a string in that form, a date or time of day that does not exist, a leap
            second (``:60``), or an instant outside years 0001…9999 in UTC. The message quotes the value.
    """
    if type(value) is not str:
        raise ValueError(f"timestamp must be a string, got {type(value).__name__}")
    m = _INSTANT.fullmatch(value)
    if m is None:
        raise ValueError(
            f"timestamp {value[:64]!r} is not an RFC 3339 instant (e.g. 2026-02-07T05:03:00Z,"
            " 2026-02-07T06:03:00.250+01:00)"
        )
    year, month, day, hh, mm, ss = (int(g) for g in m.groups()[:6])
    fraction, sign, off_h, off_m = m.group(7), m.group(8), m.group(9), m.group(10)
    if ss == 60:
        raise ValueError(f"timestamp {value!r} is a leap second, which has no microsecond of its own here")
    if hh > 23 or mm > 59 or ss > 59:
        raise ValueError(f"timestamp {value!r} has an invalid time of day")
    if sign is not None and (int(off_h) > 23 or int(off_m) > 59):
        raise ValueError(f"timestamp {value!r} has an invalid UTC offset")
    try:
        days = date(year, month, day).toordinal() - _EPOCH_ORDINAL
    except ValueError:
        raise ValueError(f"timestamp {value!r} names a date that does not exist") from None
    us = int((fraction or "0")[:6].ljust(6, "0"))
    offset_s = 0 if sign is None else (1 if sign == "+" else -1) * (int(off_h) * 3600 + int(off_m) * 60)
    ts_us = ((((days * 24 + hh) * 60 + mm) * 60 + ss) - offset_s) * US_PER_SECOND + us
    try:
        format_ts_us(ts_us)
    except ValueError:
        raise ValueError(f"timestamp {value!r} is outside years 0001..9999 in UTC") from None
    return ts_us


def canonical_instant(value: str) -> str:
    """Any RFC 3339 instant in the canonical form ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (see
    :func:`parse_instant_us`; raises the same ``ValueError``)."""
    return format_ts_us(parse_instant_us(value))


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
