"""Exact, order-independent aggregates and their served representation (pure: no I/O).

Why amounts are integers
========================

Amounts arrive as JSON numbers or numeric strings (``12.5``, ``"12.50"``). Summing them as floats
would make a window's sum depend on the order of additions (float addition is not associative),
so replaying the same events in another batch split or partition interleaving could change a
served value — and with it the ``snapshot_hash``. Instead each amount is converted **once**, at
intake, to an integer number of micro-units (1e-6) with :class:`decimal.Decimal` and
round-half-even, and everything downstream (tiles, merges, SQL upserts) adds Python/SQL integers,
which is exact, associative and commutative. Values are turned back into JSON numbers only when
served (:func:`present`).

A float amount is converted through its shortest ``repr`` (``12.0000005`` → ``"12.0000005"``),
not its exact binary expansion, so a JSON number and the same digits sent as a string give the
same units.

Bound: ``|amount| ≤ MAX_ABS_AMOUNT`` (10⁹). Larger values (and ``1e308``-style garbage) are treated
as "no amount", so one event's units always fit a signed 64-bit column with room for ~9,000 such
events in one tile sum.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Context, Decimal, InvalidOperation, localcontext
from typing import ClassVar

from ctxplane.contracts.features.windows import format_ts_us

__all__ = (
    "AGGREGATIONS",
    "AMOUNT_SCALE",
    "MAX_ABS_AMOUNT",
    "Agg",
    "parse_amount",
    "present",
    "units_to_number",
)

#: Amount units per currency unit: amounts are stored as integers of 1e-6.
AMOUNT_SCALE = 1_000_000
#: Largest accepted ``|amount|`` (currency units); beyond it an amount counts as absent.
MAX_ABS_AMOUNT = 10**9
_MAX_ABS_DEC = Decimal(MAX_ABS_AMOUNT)
_MAX_ABS_UNITS = MAX_ABS_AMOUNT * AMOUNT_SCALE
# A numeric string longer than this is not an amount anyone sends; refusing it bounds Decimal work.
_MAX_AMOUNT_TEXT = 64
# Plain decimal notation only (optional sign, digits, fraction, exponent), ASCII. Rejects what
# Decimal() would otherwise accept: "NaN", "Infinity", "1_000", non-ASCII digits.
_AMOUNT_RE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
# Precision well above the longest accepted text, so scaling by 10**6 is exact and the only rounding
# is the explicit half-even one.
_DEC_CONTEXT = Context(prec=_MAX_AMOUNT_TEXT + 16, rounding=ROUND_HALF_EVEN)

#: The aggregation vocabulary (docs/configuration.md §Feature policy format). Extend it, never rename. ``event_count`` is the
#: origin-compatible spelling of ``count`` (same value).
AGGREGATIONS: frozenset[str] = frozenset(
    {"count", "event_count", "amount_sum", "amount_min", "amount_max", "last_event_ts_utc"}
)


def _decimal_to_units(value: Decimal) -> int | None:
    if not value.is_finite() or abs(value) > _MAX_ABS_DEC:
        return None
    with localcontext(_DEC_CONTEXT):
        units = int(value.scaleb(6).to_integral_value(rounding=ROUND_HALF_EVEN))
    return units


def parse_amount(value: object) -> int | None:
    """Convert an event's ``amount`` to integer micro-units, or ``None`` for "no usable amount".

    Accepted: ``int``, finite ``float``, :class:`~decimal.Decimal`, and strings in plain decimal
    notation (``"12.50"``, ``"-3"``, ``"1e3"``; surrounding ASCII whitespace ignored), each with
    ``|amount| ≤ MAX_ABS_AMOUNT``. Rounded half-even to 6 decimals.

    Returns:
        The amount × 10⁶ as an ``int``; ``None`` for ``bool``, ``None``, NaN/±inf, non-numeric
        strings, out-of-bound values and any other type. ``None`` means the event is counted in
        ``count`` only (docs/events.md §Event types, classes and planes) — it is never an error.
    """
    if type(value) is int:  # the common case first; also excludes bool (a subclass of int)
        if -MAX_ABS_AMOUNT <= value <= MAX_ABS_AMOUNT:
            return value * AMOUNT_SCALE
        return None
    if type(value) is float:
        if not math.isfinite(value):
            return None
        text = repr(value)
        whole, dot, fraction = text.partition(".")
        if dot and len(fraction) <= 6 and fraction.isdigit():
            # Plain notation with at most six decimals (most amounts): the digits are the units,
            # exactly what the Decimal path below gives, without its cost (~1.5 µs per event).
            units = int(whole + fraction.ljust(6, "0"))
            return units if -_MAX_ABS_UNITS <= units <= _MAX_ABS_UNITS else None
        return _decimal_to_units(Decimal(text))
    if isinstance(value, str):
        text = value.strip(" \t\r\n")
        if len(text) > _MAX_AMOUNT_TEXT or _AMOUNT_RE.fullmatch(text) is None:
            return None
        try:
            return _decimal_to_units(Decimal(text))
        except InvalidOperation:  # pragma: no cover - the regex admits only valid literals
            return None
    if isinstance(value, Decimal):
        return _decimal_to_units(value)
    return None


def _min(x: int | None, y: int | None) -> int | None:
    if x is None:
        return y
    if y is None:
        return x
    return x if x <= y else y


def _max(x: int | None, y: int | None) -> int | None:
    if x is None:
        return y
    if y is None:
        return x
    return x if x >= y else y


@dataclass(frozen=True, slots=True)
class Agg:
    """The aggregate of a set of events: a commutative monoid under :meth:`merge`.

    Invariants: ``amount_count ≤ count``; ``amount_min``/``amount_max`` are ``None`` exactly when
    ``amount_count == 0``; ``last_ts_us`` is ``None`` exactly when ``count == 0``.

    Attributes:
        count: number of events.
        amount_sum: sum of the events' amounts, in micro-units (0 when none had an amount).
        amount_count: number of events that had a usable amount.
        amount_min: smallest amount (micro-units) or ``None``.
        amount_max: largest amount (micro-units) or ``None``.
        last_ts_us: latest event time (µs since the epoch) or ``None``.
    """

    count: int
    amount_sum: int
    amount_count: int
    amount_min: int | None
    amount_max: int | None
    last_ts_us: int | None

    #: The identity of :meth:`merge`: the aggregate of no event.
    EMPTY: ClassVar[Agg]

    @classmethod
    def of_event(cls, ts_us: int, amount_units: int | None) -> Agg:
        """The aggregate of one event."""
        if amount_units is None:
            return cls(1, 0, 0, None, None, ts_us)
        return cls(1, amount_units, 1, amount_units, amount_units, ts_us)

    @classmethod
    def of_events(cls, events: Iterable[tuple[int, int | None]]) -> Agg:
        """The aggregate of ``(ts_us, amount_units)`` pairs (a straight fold, for small inputs)."""
        count = amount_sum = amount_count = 0
        amin: int | None = None
        amax: int | None = None
        last: int | None = None
        for ts, amount in events:
            count += 1
            if last is None or ts > last:
                last = ts
            if amount is not None:
                amount_sum += amount
                amount_count += 1
                if amin is None or amount < amin:
                    amin = amount
                if amax is None or amount > amax:
                    amax = amount
        return cls(count, amount_sum, amount_count, amin, amax, last)

    def merge(self, other: Agg) -> Agg:
        """Combine two disjoint sets of events. Associative and commutative, ``EMPTY`` is the
        identity, so any grouping or order of merges gives the same result."""
        if other.count == 0:
            return self
        if self.count == 0:
            return other
        return Agg(
            self.count + other.count,
            self.amount_sum + other.amount_sum,
            self.amount_count + other.amount_count,
            _min(self.amount_min, other.amount_min),
            _max(self.amount_max, other.amount_max),
            _max(self.last_ts_us, other.last_ts_us),
        )


Agg.EMPTY = Agg(0, 0, 0, None, None, None)


def units_to_number(units: int) -> float:
    """Micro-units → the served JSON number (a ``float``).

    ``units / 10**6`` is a correctly rounded int/int division, so the float is the nearest double
    to the exact decimal value. Any decimal of at most 15 significant digits survives a round trip
    through a double, so for ``|value| < 10**9`` the shortest repr (what orjson writes) is exactly
    that decimal with at most 6 fractional digits. Larger sums are served as the nearest double.
    Either way the same units always give the same bytes, which is what ``snapshot_hash`` needs.
    """
    return units / AMOUNT_SCALE


def present(agg: Agg, aggregations: Sequence[str]) -> dict[str, object]:
    """Map the aggregation names of a group to the values served for ``agg``.

    Served values: ``count``/``event_count`` → ``int``; ``amount_sum`` → ``float`` (``0.0`` for an
    empty window); ``amount_min``/``amount_max`` → ``float`` or ``None``; ``last_event_ts_utc`` →
    ``"YYYY-MM-DDTHH:MM:SS.ffffffZ"`` or ``None``. Sums, minima and maxima are always floats (never
    ``12`` for one value and ``12.5`` for another) so the JSON type of a feature never varies.

    Raises:
        ValueError: a name outside :data:`AGGREGATIONS` (a validated policy never has one).
    """
    out: dict[str, object] = {}
    for name in aggregations:
        if name == "count" or name == "event_count":
            out[name] = agg.count
        elif name == "amount_sum":
            out[name] = units_to_number(agg.amount_sum)
        elif name == "amount_min":
            out[name] = None if agg.amount_min is None else units_to_number(agg.amount_min)
        elif name == "amount_max":
            out[name] = None if agg.amount_max is None else units_to_number(agg.amount_max)
        elif name == "last_event_ts_utc":
            out[name] = None if agg.last_ts_us is None else format_ts_us(agg.last_ts_us)
        else:
            raise ValueError(
                f"unknown aggregation {name!r}; known: {', '.join(sorted(AGGREGATIONS))}"
            )
    return out
