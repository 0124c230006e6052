"""Writing the file bus: creating topics and appending records durably, then the advisory head.

Publishing
----------
Lines are encoded with orjson (compact) before anything is written, so an unserialisable envelope
fails the call with nothing written. Per partition file: open with ``O_APPEND``, take an exclusive
``flock`` (co-operating publishers in other processes then never interleave and always compute
correct offsets), write every line of the call, ``fsync`` once, release. A last line without its
``\\n`` found under the lock can only be the remains of a publisher that crashed mid-write: it is
terminated with ``\\n`` first, so it becomes one junk record (which intake ledgers) instead of
corrupting the new line. Then ``head.json`` is replaced (``layout.py``).

Everything here blocks: the adapter runs it in a worker thread.
"""

from __future__ import annotations

import fcntl
import os
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import orjson

from ctxplane.runtime.bus.base import BusRef
from ctxplane.runtime.bus.file.layout import (
    FILE_LINE,
    O_CLOEXEC,
    encode_line,
    partition_path,
    scan_partitions,
    topic_dir,
    utc_now,
)
from ctxplane.runtime.bus.file.partitions import PartitionState, PartitionTable, count_lines
from ctxplane.runtime.bus.routing import partition_for
from ctxplane.runtime.exceptions import BusError

__all__ = ("FileWriter",)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileWriter:
    """Creates topics and publishes records under ``root`` (blocking calls).

    Args:
        root: The bus root directory.
        partitions: The adapter's partition states (shared with its reads).
        default_partitions: Partition count of a topic created by a publish that names none.
        check_open: Raises when the adapter is closed; run before a publish touches anything.
    """

    def __init__(
        self, root: Path, partitions: PartitionTable, default_partitions: int, check_open: Callable[[], None]
    ) -> None:
        self._root = root
        self._partitions = partitions
        self._default_partitions = default_partitions
        self._check_open = check_open

    def create_topic(self, topic: str, partitions: int) -> None:
        """Create ``partitions`` empty partition files (and ``head.json``), durably; a no-op when
        the topic has exactly that many.

        Raises:
            ValueError: ``partitions`` is not an int >= 1.
            BusError: the topic exists with other partition files.
        """
        if not isinstance(partitions, int) or partitions < 1:
            raise ValueError(f"partitions must be an int >= 1, got {partitions!r}")
        directory = topic_dir(self._root, topic)
        existing = scan_partitions(directory)
        if existing:
            if existing == list(range(partitions)):
                return
            raise BusError(
                f"topic {topic!r} already exists under {self._root} with {len(existing)} "
                f"partition file(s) {existing}; it cannot be re-created with {partitions}"
            )
        created_root = not self._root.exists()
        directory.mkdir(parents=True, exist_ok=True)
        for partition in range(partitions):
            fd = os.open(
                partition_path(self._root, topic, partition),
                os.O_WRONLY | os.O_CREAT | O_CLOEXEC,
                0o644,
            )
            os.close(fd)
        # Make the new names durable: a topic that vanished after a crash would reroute keys.
        _fsync_dir(directory)
        _fsync_dir(directory.parent)
        if created_root:
            _fsync_dir(self._root.parent)
        self._write_head(topic, partitions)

    def publish(
        self,
        topic: str,
        items: list[tuple[str, Mapping[str, Any]]],
        partitions: int | None,
    ) -> list[BusRef]:
        """Append every ``(partition_key, envelope)`` pair (see the module docstring); the topic
        is created with ``partitions`` (or the default count) if it has no partition file.

        Raises:
            TypeError: an envelope (or key) is not JSON-serialisable; nothing was written.
            BusError: partition files not numbered ``0..n-1``.
        """
        self._check_open()
        directory = topic_dir(self._root, topic)
        numbers = scan_partitions(directory)
        if not numbers:
            self.create_topic(topic, partitions or self._default_partitions)
            numbers = scan_partitions(directory)
        count = len(numbers)
        if numbers != list(range(count)):
            raise BusError(
                f"topic {topic!r} under {self._root} has partition files {numbers}; routing needs "
                f"them numbered 0..{count - 1}"
            )
        published_at = utc_now()
        # Step 1: encode everything before writing anything.
        lines: dict[int, list[bytes]] = {}
        routes: list[tuple[int, int]] = []  # per item: (partition, index within that partition)
        for key, envelope in items:
            if not isinstance(key, str):
                raise TypeError(f"partition_key must be str, got {type(key).__name__}")
            payload = envelope if isinstance(envelope, dict) else dict(envelope)
            line = encode_line(key, payload, published_at)
            partition = partition_for(key, count)
            bucket = lines.setdefault(partition, [])
            routes.append((partition, len(bucket)))
            bucket.append(line)
        # Step 2: append and fsync each touched partition file once.
        first_offsets = {
            partition: self._append(self._partitions.get(topic, partition), bucket)
            for partition, bucket in sorted(lines.items())
        }
        # Step 3: advisory head, after the data is durable.
        self._write_head(topic, count)
        return [
            BusRef(topic, partition, str(first_offsets[partition] + k), FILE_LINE, published_at)
            for partition, k in routes
        ]

    @staticmethod
    def _append(state: PartitionState, lines: list[bytes]) -> int:
        """Append ``lines`` to one partition file durably; return the first line's offset."""
        data = b"\n".join(lines) + b"\n"
        with state.count_lock:
            fd = os.open(state.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                first = state.count.refresh(fd)
                size = os.fstat(fd).st_size
                if size > state.count.byte_offset:
                    # A torn last line (a publisher crashed mid-write): terminate it, so it is one
                    # junk record for intake to ledger, rather than a prefix glued to our line.
                    data = b"\n" + data
                    first += 1
                _write_all(fd, data)
                os.fsync(fd)
                state.count.refresh(fd)
                return first
            finally:
                os.close(fd)  # also releases the flock

    def _write_head(self, topic: str, count: int) -> None:
        directory = topic_dir(self._root, topic)
        heads = {
            str(partition): {"next_offset": count_lines(self._partitions.get(topic, partition))}
            for partition in range(count)
        }
        body = orjson.dumps({"next_offset": heads["0"]["next_offset"], "partitions": heads})
        # A unique temp name, so concurrent publishers never write into each other's temp file.
        tmp = directory / f".head.json.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        tmp.write_bytes(body)
        os.replace(tmp, directory / "head.json")
