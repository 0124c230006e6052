"""What the store's columns can hold, checked where values enter: bus records and query requests.

Every integer that reaches SQL lands in a signed 64-bit column (``BIGINT``: SQLite's INTEGER,
PostgreSQL's int8; ``migrations/0001_initial.sql``), and every string in a ``TEXT`` column, which
on PostgreSQL cannot hold U+0000. A value outside that is refused by the database driver
(SQLite: ``OverflowError``; PostgreSQL: ``DataError``) — a deterministic failure that would fail
its whole group commit again on every retry. So it is refused here instead, as bad input with a
reason code (intake) or an ``INVALID_REQUEST`` naming the field (queries), identically on both
backends.
"""

from __future__ import annotations

from typing import TypeGuard

__all__ = ("BIGINT_MAX", "BIGINT_MIN", "is_sql_text", "sequence_number")

BIGINT_MIN = -(2**63)
BIGINT_MAX = 2**63 - 1
# The longest decimal text of a BIGINT. Checked before ``int()``: a 5,000-digit string would make
# ``int()`` raise ValueError (CPython's 4,300-digit limit), and converting long digit strings
# costs quadratic time.
_BIGINT_DIGITS = len(str(BIGINT_MAX))


def is_sql_text(value: object, max_len: int) -> TypeGuard[str]:
    """A string of 1..``max_len`` characters a ``TEXT`` column holds on both backends (no U+0000)."""
    return type(value) is str and 0 < len(value) <= max_len and "\x00" not in value


def sequence_number(value: object) -> int | None:
    """Read a non-negative sequence number (e.g. ``arrival_seq``): an ``int`` or its ASCII digits.

    Returns:
        the number, or ``None`` when ``value`` is not a non-negative integer at all (absent, a
        bool, a float, a negative number, any other text).

    Raises:
        ValueError: ``value`` is such an integer but beyond ``BIGINT_MAX`` (``2**63``, a 40-digit
            string); the message names the range.
    """
    if type(value) is int:
        number = value
    elif type(value) is str and value.isascii() and value.isdigit():
        digits = value.lstrip("0") or "0"
        if len(digits) > _BIGINT_DIGITS:
            raise ValueError(f"{len(digits)} digits; the range is 0..{BIGINT_MAX}")
        number = int(digits)
    else:
        return None
    if number < 0:
        return None
    if number > BIGINT_MAX:
        raise ValueError(f"{number} is out of range 0..{BIGINT_MAX}")
    return number
