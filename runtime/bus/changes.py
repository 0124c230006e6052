"""Change notification for the file bus: which partitions may hold new records, without polling.

A :class:`ChangeFeed` is a *hint*: readers still read to find out what is there, and keep a slow
safety-net poll, so a missed or merged notification only costs latency, never a record.

On Linux, :class:`InotifyFeed` watches each topic directory with inotify (``IN_MODIFY`` for an
append to ``partition=<n>.jsonl``, ``IN_CREATE`` / ``IN_MOVED_TO`` for a new partition file) and the
bus root (for a topic directory created later). The descriptor is waited on in the event loop
(``anyio.wait_readable``), so an idle process costs nothing: no thread, no timer. Why not the
``watchfiles`` package: its watcher thread wakes every ``step_ms`` (50 ms by default) and takes the
GIL to check for signals, which is the polling this replaces, and it reports a change only after
two quiet steps.

Elsewhere (no inotify, or the per-user instance limit reached), :func:`open_inotify_feed` returns
``None`` and readers poll.
"""

from __future__ import annotations

import abc
import ctypes
import ctypes.util
import os
import re
import struct
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import ClassVar, Final

import anyio

__all__ = ("ChangeFeed", "InotifyFeed", "open_inotify_feed")

PartitionKey = tuple[str, int]

_IN_MODIFY: Final = 0x002
_IN_MOVED_TO: Final = 0x080
_IN_CREATE: Final = 0x100
_IN_Q_OVERFLOW: Final = 0x4000
_IN_ISDIR: Final = 0x40000000
_EVENT: Final = struct.Struct("iIII")  # wd, mask, cookie, len (struct inotify_event), then the name
_PARTITION_FILE: Final = re.compile(rb"partition=(0|[1-9][0-9]*)\.jsonl")
_READ_BYTES: Final = 64 * 1024


class ChangeFeed(abc.ABC):
    """Partitions that may have new records since the last :meth:`wait`."""

    kind: ClassVar[str]  # what notifies, for the start-up log line

    @abc.abstractmethod
    async def wait(self) -> set[PartitionKey]:
        """Block until something changed; the partitions it concerns (may be a superset)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the feed (idempotent)."""


class InotifyFeed(ChangeFeed):
    """inotify on the bus root and the watched topics' directories (see the module docstring)."""

    kind = "inotify"

    def __init__(self, libc: ctypes.CDLL, fd: int, root: Path, topics: Iterable[str]) -> None:
        self._libc = libc
        self._fd = fd
        self._root = root
        self._topics = frozenset(topics)
        self._by_wd: dict[int, str | None] = {}  # watch descriptor -> topic (None: the root)
        self._watched: set[str] = set()
        self._pending: set[PartitionKey] = set()
        self._add(root, None)
        for topic in sorted(self._topics):
            self._watch_topic(topic)

    def _add(self, path: Path, topic: str | None) -> bool:
        mask = _IN_CREATE | _IN_MOVED_TO | (0 if topic is None else _IN_MODIFY)
        wd = self._libc.inotify_add_watch(self._fd, os.fsencode(path), mask)
        if wd < 0:
            return False  # not there (yet), or the watch limit: that part of the bus is polled
        self._by_wd[wd] = topic
        return True

    def _watch_topic(self, topic: str) -> None:
        if topic in self._watched or not self._add(self._root / topic, topic):
            return
        self._watched.add(topic)
        # Files created before the watch existed sent no event: report what is there once.
        try:
            names = os.listdir(self._root / topic)
        except OSError:
            return
        for name in names:
            match = _PARTITION_FILE.fullmatch(os.fsencode(name))
            if match:
                self._pending.add((topic, int(match.group(1))))

    async def wait(self) -> set[PartitionKey]:
        while not self._pending:
            await anyio.wait_readable(self._fd)
            self._drain()
        changed, self._pending = self._pending, set()
        return changed

    def _drain(self) -> None:
        try:
            data = os.read(self._fd, _READ_BYTES)
        except BlockingIOError:
            return
        for wd, mask, name in _events(data):
            if mask & _IN_Q_OVERFLOW:
                # The kernel dropped events: every watched partition may have changed.
                self._pending.update((t, p) for t in self._watched for p in _partitions(self._root / t))
                continue
            topic = self._by_wd.get(wd)
            if topic is None:
                if mask & _IN_ISDIR and os.fsdecode(name) in self._topics:
                    self._watch_topic(os.fsdecode(name))
                continue
            match = _PARTITION_FILE.fullmatch(name)
            if match:
                self._pending.add((topic, int(match.group(1))))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _events(data: bytes) -> Iterable[tuple[int, int, bytes]]:
    offset = 0
    while offset + _EVENT.size <= len(data):
        wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
        start = offset + _EVENT.size
        yield wd, mask, data[start:start + length].rstrip(b"\0")
        offset = start + length


def _partitions(topic_dir: Path) -> list[int]:
    try:
        names = os.listdir(topic_dir)
    except OSError:
        return []
    return [int(m.group(1)) for m in (_PARTITION_FILE.fullmatch(os.fsencode(n)) for n in names) if m]


def open_inotify_feed(root: Path, topics: Iterable[str]) -> InotifyFeed | None:
    """An inotify feed over ``root`` for ``topics``, or ``None`` where inotify cannot be had (not
    Linux, no libc, the per-user instance limit, or no bus root yet)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        init = libc.inotify_init1
    except (OSError, AttributeError):
        return None
    fd = init(os.O_NONBLOCK | os.O_CLOEXEC)
    if fd < 0:
        return None  # EMFILE (max_user_instances) or ENOSYS: poll instead
    try:
        feed = InotifyFeed(libc, fd, Path(root), topics)
    except BaseException:
        os.close(fd)
        raise
    if not feed._by_wd:  # not even the root could be watched
        feed.close()
        return None
    return feed

