"""Event time and exact window plans over hierarchical tiles (pure: no I/O).

Theory of operation
===================

Time. Every timestamp in the feature plane is an ``int`` number of **microseconds since the Unix
epoch, UTC**. The wire format (docs/events.md §Timestamps) is RFC 3339 with exactly six fractional digits and
``Z``, so microseconds are the exact resolution: nothing is rounded, and integer comparison is the
same as comparing the strings.

Windows. A window of duration ``d`` at ``as_of = t`` aggregates exactly the events with
``t − d < ts ≤ t`` (docs/architecture.md §Exact windows): open on the left, closed on the right. Everything below
is written for such half-open-on-the-left intervals ``(a, b]``.

Tiles. Aggregates are also kept per key in tiles of three levels: minute, hour and day. Tile ``k``
of a level of length ``L`` (in µs) covers ``(k·L, (k+1)·L]``, so

    tile_id(ts, L) = (ts − 1) // L

Why left-open tiles: windows are left-open too. With this convention an event stamped exactly on
a boundary, e.g. ``05:00:00.000000``, belongs to the tile that *ends* at 05:00, which is exactly
the window ``(04:00, 05:00]`` that ends there. An L-aligned interval ``(A, B]`` is then precisely
tiles ``A/L … B/L − 1``: no off-by-one at either end, and the usual "as_of on the hour" query is
answered with whole tiles only. (With the more common ``[k·L, (k+1)·L)`` convention, every aligned
window would need a raw read for the boundary instant.)

Plans. :func:`decompose` cuts ``(a, b]`` into: raw ranges at the two edges (inside the partial
minutes, read from the raw-event table, so min/max stay exact), minute tiles up to the first and
from the last whole hour, hour tiles up to the first and from the last whole day, and day tiles in
the middle. For a 7-day window that is at most 7 day + 2·23 hour + 2·59 minute tiles and at most
two minutes of raw events, whatever the key's history: reads are cheap for hot keys.
"""

from __future__ import annotations

from dataclasses import dataclass

from ctxplane.contracts.timestamps import format_ts_us, parse_ts_us

__all__ = (
    "DAY_US",
    "HOUR_US",
    "LEVELS_SECONDS",
    "MINUTE_US",
    "US_PER_SECOND",
    "RawRange",
    "TileRange",
    "WindowPlan",
    "decompose",
    "format_ts_us",
    "parse_ts_us",
    "tile_id",
    "tile_span_us",
)

US_PER_SECOND = 1_000_000
MINUTE_US = 60 * US_PER_SECOND
HOUR_US = 60 * MINUTE_US
DAY_US = 24 * HOUR_US

#: Tile levels, smallest first, named by their length in seconds (the ``level_seconds`` column).
LEVELS_SECONDS: tuple[int, ...] = (60, 3600, 86400)

#: ``(lo_us, hi_us)``: the raw-event interval ``lo < ts ≤ hi``.
RawRange = tuple[int, int]
#: ``(level_seconds, first_tile, last_tile)``: tiles ``first … last`` inclusive of one level.
TileRange = tuple[int, int, int]

# ---------------------------------------------------------------------------------------------
# Timestamps
# ---------------------------------------------------------------------------------------------

# re.ASCII so that "\d" does not accept other scripts' digits ("٠", "５"): the format is ASCII.
# date(1970, 1, 1).toordinal(): converts proleptic-Gregorian ordinals to days since the epoch.


# ---------------------------------------------------------------------------------------------
# Tiles and window plans
# ---------------------------------------------------------------------------------------------


def tile_id(ts_us: int, level_seconds: int) -> int:
    """The tile of ``level_seconds`` holding an event at ``ts_us``: tile ``k`` covers
    ``(k·L, (k+1)·L]`` (see the module docstring for why the interval is open on the left)."""
    return (ts_us - 1) // (level_seconds * US_PER_SECOND)


def tile_span_us(level_seconds: int, tile: int) -> RawRange:
    """The interval ``(lo, hi]`` covered by ``tile`` of ``level_seconds``."""
    length = level_seconds * US_PER_SECOND
    return tile * length, (tile + 1) * length


@dataclass(frozen=True, slots=True)
class WindowPlan:
    """How to read the window ``(start_us, end_us]``: raw ranges plus tile ranges.

    Invariant: the raw intervals and the tiles' intervals are pairwise disjoint and their union is
    exactly ``(start_us, end_us]``. Every raw interval lies inside a partial minute at one edge
    (at most two of them, under two minutes in total); tiles are the largest that fit.

    Attributes:
        start_us: ``a`` in ``(a, b]`` (exclusive).
        end_us: ``b`` in ``(a, b]`` (inclusive).
        raw: raw-event intervals ``(lo, hi]``, ascending: read events with ``lo < ts ≤ hi``.
        tiles: ``(level_seconds, first_tile, last_tile)`` inclusive ranges, ascending in time
            (left minute, left hour, days, right hour, right minute; absent ones omitted).
    """

    start_us: int
    end_us: int
    raw: tuple[RawRange, ...]
    tiles: tuple[TileRange, ...]

    def tile_count(self) -> int:
        """Number of tile rows the plan may touch (a bound on the tile read)."""
        return sum(last - first + 1 for _, first, last in self.tiles)

    def raw_span_us(self) -> int:
        """Total length of the raw intervals, in µs (under two minutes)."""
        return sum(hi - lo for lo, hi in self.raw)


_EMPTY_PLAN_TILES: tuple[TileRange, ...] = ()


def _ceil_to(x: int, unit: int) -> int:
    return -((-x) // unit) * unit


def _floor_to(x: int, unit: int) -> int:
    return (x // unit) * unit


def decompose(a: int, b: int) -> WindowPlan:
    """Plan the exact read of the window ``(a, b]`` (µs) with the largest tiles possible.

    Algorithm: shrink ``(a, b]`` to its minute-aligned core ``(a_m, b_m]``; what lies outside is
    raw. Inside the core, shrink to the hour-aligned core; what lies outside is minute tiles.
    Inside that, shrink to the day-aligned core; what lies outside is hour tiles, the rest is day
    tiles. When a level's core is empty, the remainder at that level is used whole.

    Args:
        a: exclusive start, µs (``as_of − duration`` for a window).
        b: inclusive end, µs (``as_of``).

    Returns:
        A :class:`WindowPlan`; empty (no raw, no tiles) when ``b <= a``.
    """
    if b <= a:
        return WindowPlan(a, b, (), _EMPTY_PLAN_TILES)

    a_m, b_m = _ceil_to(a, MINUTE_US), _floor_to(b, MINUTE_US)
    if a_m >= b_m:
        # No whole minute inside: the window lies within at most two partial minutes, all raw.
        return WindowPlan(a, b, ((a, b),), _EMPTY_PLAN_TILES)

    raw: list[RawRange] = []
    if a < a_m:
        raw.append((a, a_m))
    if b_m < b:
        raw.append((b_m, b))

    left: list[TileRange] = []
    right: list[TileRange] = []
    middle: TileRange | None = None
    lo, hi = a_m, b_m  # the part not yet assigned, aligned to the current level
    for level_us, bigger_us in ((MINUTE_US, HOUR_US), (HOUR_US, DAY_US), (DAY_US, None)):
        level_s = level_us // US_PER_SECOND
        if bigger_us is not None:
            c_lo, c_hi = _ceil_to(lo, bigger_us), _floor_to(hi, bigger_us)
            if c_lo < c_hi:
                # Whole tiles of the bigger level fit: this level only fills the two rims.
                if lo < c_lo:
                    left.append((level_s, lo // level_us, c_lo // level_us - 1))
                if c_hi < hi:
                    right.append((level_s, c_hi // level_us, hi // level_us - 1))
                lo, hi = c_lo, c_hi
                continue
        # (lo, hi] is level-aligned and no bigger tile fits: tiles lo/L … hi/L − 1.
        middle = (level_s, lo // level_us, hi // level_us - 1)
        break

    tiles = left
    if middle is not None:
        tiles.append(middle)
    tiles.extend(reversed(right))
    return WindowPlan(a, b, tuple(raw), tuple(tiles))
