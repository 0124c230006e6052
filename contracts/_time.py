"""Event time: RFC 3339 UTC strings with exactly six fractional digits, and integer microseconds."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

__all__ = ("TS_PATTERN", "format_ts_us", "now_utc", "parse_ts_us")

TS_PATTERN = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")
_EPOCH = datetime(1970, 1, 1)
_ONE_US = timedelta(microseconds=1)


def parse_ts_us(value: str) -> int:
    """Microseconds since the epoch of ``YYYY-MM-DDTHH:MM:SS.ffffffZ``.

    Raises:
        ValueError: the string is not in exactly that form or is not a real instant.
    """
    if not TS_PATTERN.match(value):
        raise ValueError(f"not an RFC 3339 UTC timestamp with 6 fractional digits: {value!r}")
    return (datetime.fromisoformat(value[:-1]) - _EPOCH) // _ONE_US


def format_ts_us(value: int) -> str:
    """Inverse of :func:`parse_ts_us`."""
    return (_EPOCH + timedelta(microseconds=value)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def now_utc() -> str:
    """The current wall-clock time in the canonical timestamp form (for ``*_at_utc`` fields)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
