"""The event-bus adapter interface: what a partition actor may ask of any bus.

Theory of operation
-------------------
A bus is a set of *topics*, each split into numbered *partitions*; every partition is an
append-only sequence of records. A reader names where it is with an opaque **position**: the
*exclusive-next* position, i.e. "everything before this has been consumed". ``None`` means "no
checkpoint yet": the adapter then starts at its configured ``start_position`` (``trim_horizon`` =
the oldest record, ``latest`` = the current end). Positions are strings so that every bus kind fits
(``file_line``: a decimal line index; ``kinesis_sequence``: a decimal sequence number); they are
ordered with :meth:`EventBus.compare_positions`, never with ``<`` on strings.

Adapters move bytes and nothing else: :class:`BusRecord.raw` is the record exactly as it sits on the
bus. Decoding and validation belong to the pure intake core, so that junk (not JSON, not UTF-8, a
10 MB line) becomes a ledger row there instead of an exception here — an adapter never skips or
rejects a record because of its content. The one exception is size: an adapter may bound how much
of a record it reads into memory, and then hands out the record's first bytes with its
:attr:`BusRecord.full_size`.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Final, Self

if TYPE_CHECKING:
    from ctxplane.runtime.bus.changes import ChangeFeed

__all__ = (
    "START_POSITIONS",
    "Backlog",
    "BusRecord",
    "BusRef",
    "EventBus",
    "ReadResult",
)

#: The values ``start_position`` may take (config key ``bus.start_position``).
START_POSITIONS: Final = ("trim_horizon", "latest")


@dataclass(frozen=True, slots=True)
class BusRecord:
    """One record as read from a bus partition.

    Attributes:
        topic: The topic it was read from.
        partition: The partition number (``>= 0``).
        offset: Its own position, as a string of the bus's ``offset_kind`` (for ``file_line``, the
            0-based line index). The position *after* it is not ``offset + 1`` in general
            (Kinesis); use :attr:`ReadResult.next_position`.
        offset_kind: ``"file_line"`` or ``"kinesis_sequence"``.
        raw: The record's bytes exactly as on the bus (for the file bus, the line without its
            trailing ``\\n``). Never decoded or validated here.
        full_size: ``None`` when ``raw`` is the whole record. Set when the record was longer than
            the adapter reads into memory: ``raw`` then holds only its first bytes and
            ``full_size`` its length (intake rejects it for its size, never parses the prefix).
    """

    topic: str
    partition: int
    offset: str
    offset_kind: str
    raw: bytes
    full_size: int | None = None


@dataclass(frozen=True, slots=True)
class ReadResult:
    """The answer to one :meth:`EventBus.read` call.

    Attributes:
        records: The records read, in offset order (possibly empty).
        next_position: The exclusive-next position after this batch: pass it to the next ``read``.
            It may advance even when ``records`` is empty (e.g. past blank lines of a file bus).
    """

    records: list[BusRecord]
    next_position: str


@dataclass(frozen=True, slots=True)
class BusRef:
    """Where a published record landed (the origin's ``EbRef``).

    Attributes:
        topic: The topic written to.
        partition: The partition the partition key routed to.
        offset: The record's own position, of kind ``offset_kind``.
        offset_kind: ``"file_line"`` or ``"kinesis_sequence"``.
        published_at_utc: RFC 3339 UTC timestamp with 6 fractional digits, or ``None`` when the
            bus does not report one.
    """

    topic: str
    partition: int
    offset: str
    offset_kind: str
    published_at_utc: str | None = None


@dataclass(frozen=True, slots=True)
class Backlog:
    """What waits on a partition after a position, as far as the bus can say to a process that is
    not reading it (``ctxplane status --offline``). ``None`` is "the bus cannot say", never 0.

    Attributes:
        end: The exclusive-next position after the last complete record, when the bus can name it.
        lag: Positions between the position and ``end`` (the file bus: lines, blank ones included).
        behind_ms: How far the position is behind the partition's newest record in time (Kinesis:
            ``MillisBehindLatest``).
        unread: Whether at least one record follows the position.
    """

    end: str | None
    lag: int | None
    behind_ms: int | None = None
    unread: bool | None = None


class EventBus(abc.ABC):
    """One bus adapter (file, Kinesis, ...). All I/O methods are async; ``compare_positions`` and
    ``lag`` are pure.

    An adapter may hold open resources (file handles, HTTP sessions): use it as an async context
    manager or call :meth:`aclose`. After ``aclose`` every I/O method raises
    :class:`~runtime.exceptions.BusClosed`.
    """

    #: The kind of every offset this adapter produces (``file_line``, ``kinesis_sequence``).
    offset_kind: ClassVar[str]

    @abc.abstractmethod
    async def list_partitions(self, topic: str) -> list[int]:
        """Return the topic's partition numbers, ascending; ``[]`` if the topic is unknown."""

    @abc.abstractmethod
    async def read(
        self,
        topic: str,
        partition: int,
        position: str | None,
        max_records: int,
        max_bytes: int,
    ) -> ReadResult:
        """Read the records at and after ``position`` (exclusive-next; ``None`` = the configured
        start position).

        At most ``max_records`` records are returned, and their ``raw`` bytes total at most
        ``max_bytes`` — except that a single record larger than ``max_bytes`` is still returned,
        alone, so that an oversized record can never stall a partition.

        Raises:
            BusPositionError: ``position`` is not a valid position of this bus's kind.
            ValueError: ``max_records`` or ``max_bytes`` is not positive.
            BusClosed: after :meth:`aclose`.
        """

    @abc.abstractmethod
    async def end_position(self, topic: str, partition: int) -> str:
        """Return the exclusive-next position after the last complete record right now (the
        position a reader reaches when it has consumed everything). An unknown partition's end is
        the start position of an empty partition."""

    @abc.abstractmethod
    async def publish(
        self,
        topic: str,
        partition_key: str,
        envelope: Mapping[str, Any],
        *,
        partitions: int | None = None,
    ) -> BusRef:
        """Append one envelope, routed by ``partition_key``, durably (it is on stable storage when
        this returns). A topic that does not exist is created with ``partitions`` partitions
        (default: the adapter's default, 1).

        Raises:
            TypeError: the envelope is not JSON-serialisable.
            BusError: bad topic name or malformed topic layout.
        """

    async def publish_many(
        self,
        topic: str,
        items: Sequence[tuple[str, Mapping[str, Any]]],
        *,
        partitions: int | None = None,
    ) -> list[BusRef]:
        """Publish ``(partition_key, envelope)`` pairs; refs are returned in input order.

        The default publishes one by one; adapters override it to batch (one fsync per partition
        file, one ``PutRecords`` call, ...). Per partition, records keep their input order.
        """
        return [
            await self.publish(topic, key, envelope, partitions=partitions)
            for key, envelope in items
        ]

    @abc.abstractmethod
    async def create_topic(self, topic: str, partitions: int) -> None:
        """Create ``topic`` with ``partitions`` partitions. Idempotent when the topic already exists
        with that many partitions.

        Raises:
            ValueError: ``partitions < 1``.
            BusError: the topic exists with a different partition count, or the name is invalid.
        """

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release every resource the adapter holds. Idempotent."""

    @abc.abstractmethod
    def compare_positions(self, a: str, b: str) -> int:
        """Return ``-1``, ``0`` or ``1`` as position ``a`` is before, equal to or after ``b``.

        Raises:
            BusPositionError: either position is malformed for this bus's kind.
        """

    def lag(self, position: str, end: str) -> int | None:
        """Records between ``position`` and ``end`` (both exclusive-next), or ``None`` when the
        bus's positions are not contiguous counts (Kinesis sequence numbers)."""
        return None

    async def backlog(self, topic: str, partition: int, position: str | None) -> Backlog:
        """What waits after ``position`` (``None``: no checkpoint, the start position applies).

        The default asks :meth:`end_position` and :meth:`lag`; an adapter whose end is not known
        to a process that has not read the partition (Kinesis) probes the bus instead.
        """
        end = await self.end_position(topic, partition)
        lag = self.lag(position, end) if position is not None else None
        return Backlog(end=end, lag=lag, unread=None if lag is None else lag > 0)

    def change_feed(self, topics: Sequence[str]) -> ChangeFeed | None:
        """A feed of the partitions of ``topics`` that may have new records (a hint that wakes idle
        readers at once), or ``None`` when this bus has none and readers poll. The caller closes it."""
        return None

    def behind_latest_ms(self, topic: str, partition: int) -> int | None:
        """How far this process's reader of the partition is behind its newest record, in
        milliseconds, as the bus last said (Kinesis: ``MillisBehindLatest``), or ``None`` when the
        bus does not say or nothing was read lately. No I/O."""
        return None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
