"""The file bus: the embedded default event bus, byte-compatible with the origin platform's.

:class:`FileBus` is the :class:`EventBus` over JSON-lines files: the layout and line format are in
``layout.py``, per-partition state in ``partitions.py``, reading in ``reader.py``, publishing in
``writer.py``. Blocking file I/O runs in worker threads, one hop per call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio.to_thread

from ctxplane.runtime.bus.base import START_POSITIONS, Backlog, BusRef, EventBus, ReadResult
from ctxplane.runtime.bus.changes import ChangeFeed, open_inotify_feed
from ctxplane.runtime.bus.file.layout import (
    DEFAULT_MAX_RECORD_BYTES,
    FILE_LINE,
    parse_position,
    scan_partitions,
    topic_dir,
)
from ctxplane.runtime.bus.file.partitions import PartitionTable, close_cursors, count_lines
from ctxplane.runtime.bus.file.reader import read_partition
from ctxplane.runtime.bus.file.writer import FileWriter
from ctxplane.runtime.exceptions import BusClosed

__all__ = ("FileBus",)


class FileBus(EventBus):
    """An :class:`EventBus` over JSON-lines files under ``root`` (see ``layout.py``).

    Args:
        root: The bus root directory (config ``bus.root``). Nothing is created until a topic is.
        start_position: Where a read with ``position=None`` starts: ``"trim_horizon"`` (line 0)
            or ``"latest"`` (the partition's current end; that read returns no records).
        default_partitions: Partition count of a topic created implicitly by a publish that does
            not name one.
        max_record_bytes: A line longer than this is handed out cut to its first
            ``max_record_bytes`` bytes, with :attr:`BusRecord.full_size` set, and the rest of it is
            skipped without being read into memory.

    Raises:
        ValueError: unknown ``start_position``, ``default_partitions < 1`` or ``max_record_bytes < 1``.
    """

    offset_kind = FILE_LINE

    def __init__(
        self,
        root: Path,
        start_position: str = "trim_horizon",
        *,
        default_partitions: int = 1,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    ) -> None:
        if start_position not in START_POSITIONS:
            raise ValueError(
                f"start_position must be one of {', '.join(START_POSITIONS)}; "
                f"got {start_position!r}"
            )
        if default_partitions < 1:
            raise ValueError(f"default_partitions must be >= 1, got {default_partitions}")
        if max_record_bytes < 1:
            raise ValueError(f"max_record_bytes must be >= 1, got {max_record_bytes}")
        self._max_record_bytes = max_record_bytes
        self._root = Path(root)
        self._start_position = start_position
        self._closed = False
        self._partitions = PartitionTable(self._root)
        self._writer = FileWriter(self._root, self._partitions, default_partitions, self._check_open)

    @property
    def root(self) -> Path:
        """The bus root directory."""
        return self._root

    @property
    def start_position(self) -> str:
        """``"trim_horizon"`` or ``"latest"``."""
        return self._start_position

    def __repr__(self) -> str:
        return f"FileBus(root={str(self._root)!r}, start_position={self._start_position!r})"

    def _check_open(self) -> None:
        if self._closed:
            raise BusClosed(f"{self!r} is closed")

    # ------------------------------------------------------------------ reading

    async def list_partitions(self, topic: str) -> list[int]:
        """Partition numbers (from the ``partition=<n>.jsonl`` file names), ascending; ``[]`` for an
        unknown topic. One ``listdir`` of a small directory, so it runs inline."""
        self._check_open()
        return scan_partitions(topic_dir(self._root, topic))

    async def read(
        self,
        topic: str,
        partition: int,
        position: str | None,
        max_records: int,
        max_bytes: int,
    ) -> ReadResult:
        """See :meth:`EventBus.read` and ``reader.py``. A partition file that does not exist reads
        as empty (the position is returned unchanged); a position past the last complete line
        returns nothing until the file grows that far."""
        self._check_open()
        if max_records < 1 or max_bytes < 1:
            raise ValueError(
                f"max_records and max_bytes must be >= 1, got {max_records} and {max_bytes}"
            )
        start: int | None
        if position is not None:
            start = parse_position(position)
        else:
            start = 0 if self._start_position == "trim_horizon" else None
        state = self._partitions.get(topic, partition)
        # Not abandoned on cancellation (anyio's default): the cursor update always completes.
        return await anyio.to_thread.run_sync(
            lambda: read_partition(
                state, topic, partition, start, max_records=max_records, max_bytes=max_bytes,
                max_record_bytes=self._max_record_bytes, check_open=self._check_open,
            )
        )

    def change_feed(self, topics: Sequence[str]) -> ChangeFeed | None:
        """inotify on the topics' directories (``runtime/bus/changes.py``); ``None`` where it cannot be had."""
        self._check_open()
        for topic in topics:
            topic_dir(self._root, topic)  # refuse a name that would leave the root
        return open_inotify_feed(self._root, topics)

    # ------------------------------------------------------------------ backlog

    async def end_position(self, topic: str, partition: int) -> str:
        """The number of complete lines in the partition file (``"0"`` if it does not exist)."""
        self._check_open()
        state = self._partitions.get(topic, partition)
        return str(await anyio.to_thread.run_sync(count_lines, state))

    async def backlog(self, topic: str, partition: int, position: str | None) -> Backlog:
        """Lines after ``position``; without one, after where a reader would start (line 0 for
        ``trim_horizon``, the end for ``latest``)."""
        end = await self.end_position(topic, partition)
        if position is None:
            position = "0" if self._start_position == "trim_horizon" else end
        lag = self.lag(position, end)
        return Backlog(end=end, lag=lag, unread=lag > 0)

    def compare_positions(self, a: str, b: str) -> int:
        """Compare two ``file_line`` positions as integers."""
        x, y = parse_position(a), parse_position(b)
        return (x > y) - (x < y)

    def lag(self, position: str, end: str) -> int:
        """Lines (blank ones included) between ``position`` and ``end``; never negative."""
        return max(0, parse_position(end) - parse_position(position))

    # ------------------------------------------------------------------ writing

    async def create_topic(self, topic: str, partitions: int) -> None:
        """Create ``partitions`` empty partition files (and ``head.json``); idempotent for the same
        count. See :meth:`EventBus.create_topic`."""
        self._check_open()
        topic_dir(self._root, topic)  # validate before the thread hop
        await anyio.to_thread.run_sync(self._writer.create_topic, topic, partitions)

    async def publish(
        self,
        topic: str,
        partition_key: str,
        envelope: Mapping[str, Any],
        *,
        partitions: int | None = None,
    ) -> BusRef:
        """Append one record (one fsync). See :meth:`EventBus.publish`."""
        (ref,) = await self.publish_many(topic, [(partition_key, envelope)], partitions=partitions)
        return ref

    async def publish_many(
        self,
        topic: str,
        items: Sequence[tuple[str, Mapping[str, Any]]],
        *,
        partitions: int | None = None,
    ) -> list[BusRef]:
        """Append every ``(partition_key, envelope)`` pair: one write and one fsync per partition
        file touched, then one ``head.json`` update (``writer.py``). Refs come back in input order;
        within a partition, records keep their input order.

        Raises:
            TypeError: an envelope (or key) is not JSON-serialisable; nothing was written.
            BusError: invalid topic name, or partition files not numbered ``0..n-1``.
            ValueError: ``partitions < 1``.
        """
        self._check_open()
        topic_dir(self._root, topic)
        if partitions is not None and partitions < 1:
            raise ValueError(f"partitions must be >= 1, got {partitions}")
        if not items:
            return []
        return await anyio.to_thread.run_sync(self._writer.publish, topic, list(items), partitions)

    # ------------------------------------------------------------------ lifecycle

    async def aclose(self) -> None:
        """Close every open partition file. Idempotent; later calls raise :class:`BusClosed`."""
        if self._closed:
            return
        self._closed = True
        await anyio.to_thread.run_sync(close_cursors, self._partitions.states())

    def __del__(self) -> None:
        # Last resort for an adapter dropped without aclose(): do not leak descriptors.
        partitions = getattr(self, "_partitions", None)
        if partitions is not None:
            partitions.drop_descriptors()
