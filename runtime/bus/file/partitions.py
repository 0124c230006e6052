"""What the file bus keeps per (topic, partition) between calls: the reader's open file and cursor,
and a running count of complete lines, each under its own lock.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from ctxplane.runtime.bus.file.layout import O_CLOEXEC, advance, partition_path

__all__ = ("LineCount", "PartitionState", "PartitionTable", "ReadCursor", "close_cursors", "count_lines")


@dataclass(slots=True, eq=False)
class ReadCursor:
    """An open partition file and where the next unread line starts.

    Invariant: ``byte_offset`` is the offset just after the ``line_index``-th newline of the file
    identified by ``identity`` (0 for line 0).
    """

    fd: int
    identity: tuple[int, int]
    line_index: int = 0
    byte_offset: int = 0
    # File size at which the last read found nothing complete to consume (a partial line); while
    # the size stays the same, polls return at once instead of re-reading the partial line.
    stalled_size: int = -1


@dataclass(slots=True, eq=False)
class LineCount:
    """How many complete lines the file identified by ``identity`` had up to ``byte_offset``.

    Invariant: ``byte_offset`` is just after the ``lines``-th newline. Shared by ``end_position``
    and the publisher so both count only the bytes appended since they last looked.
    """

    identity: tuple[int, int] | None = None
    lines: int = 0
    byte_offset: int = 0

    def refresh(self, fd: int) -> int:
        st = os.fstat(fd)
        identity = (st.st_dev, st.st_ino)
        if identity != self.identity or st.st_size < self.byte_offset:
            # Another file, or this one truncated: every cached count is void.
            self.identity, self.lines, self.byte_offset = identity, 0, 0
        self.lines, self.byte_offset = advance(fd, self.lines, self.byte_offset, None)
        return self.lines


@dataclass(slots=True, eq=False)
class PartitionState:
    """Per-(topic, partition) state. ``read_lock`` guards ``cursor``; ``count_lock`` guards
    ``count`` and serialises this process's appends to the file (``flock`` does it across
    processes). Separate locks, so a publish waiting on fsync never stalls a reader."""

    path: Path
    read_lock: threading.Lock = field(default_factory=threading.Lock)
    cursor: ReadCursor | None = None
    count_lock: threading.Lock = field(default_factory=threading.Lock)
    count: LineCount = field(default_factory=LineCount)

    def close_cursor(self) -> None:
        if self.cursor is not None:
            os.close(self.cursor.fd)
            self.cursor = None


def count_lines(state: PartitionState) -> int:
    """The number of complete lines in the partition file (0 if it does not exist); blocking."""
    with state.count_lock:
        try:
            fd = os.open(state.path, os.O_RDONLY | O_CLOEXEC)
        except FileNotFoundError:
            return 0
        try:
            return state.count.refresh(fd)
        finally:
            os.close(fd)


def close_cursors(states: list[PartitionState]) -> None:
    """Close every reader's file; blocking (it waits for a read in flight)."""
    for state in states:
        # Taking the lock waits for an in-flight read that still uses the descriptor.
        with state.read_lock:
            state.close_cursor()


class PartitionTable:
    """The state of every partition one adapter has touched, created on first use. Its lock
    guards the dict only (entries are created from worker threads by the publisher)."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self._lock = threading.Lock()
        self._states: dict[tuple[str, int], PartitionState] = {}

    def get(self, topic: str, partition: int) -> PartitionState:
        """The partition's state.

        Raises:
            ValueError: ``partition`` is not a non-negative int.
            BusError: an invalid topic name.
        """
        if not isinstance(partition, int) or partition < 0:
            raise ValueError(f"partition must be a non-negative int, got {partition!r}")
        key = (topic, partition)
        with self._lock:
            state = self._states.get(key)
            if state is None:
                state = PartitionState(partition_path(self._root, topic, partition))
                self._states[key] = state
            return state

    def states(self) -> list[PartitionState]:
        with self._lock:
            return list(self._states.values())

    def drop_descriptors(self) -> None:
        """Close every reader's file at once, taking no lock: only for an adapter being collected."""
        for state in self._states.values():
            if state.cursor is not None:
                os.close(state.cursor.fd)
                state.cursor = None
