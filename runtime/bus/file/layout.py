"""The file bus on disk: where topics and partitions live, what a line holds, and how lines are found.

Layout and format (docs/configuration.md ``bus.root``; byte-compatible with the origin platform's)
-------------------------------------------------------------------------------------------------
``<root>/<topic>/partition=<n>.jsonl`` holds partition ``n``, one record per line::

    {"partition_key": "...", "payload": {<envelope>}, "published_at_utc": "2026-...Z"}

A record's offset is its 0-based line index, written as a decimal string (offset kind
``file_line``); positions are exclusive-next line indexes. Blank lines (empty or whitespace only)
count as offsets but carry no record. Only complete lines — ending in ``\\n`` — are consumed: a
half-written last line stays unread until its newline arrives. The reader never looks inside a
line; readers downstream also accept ``"envelope"`` for ``"payload"`` and bare envelope lines. A
line longer than ``max_record_bytes`` (1 MiB, the intake limit) is never read whole: the record
carries its first ``max_record_bytes`` bytes and its ``full_size``, and intake ledgers it.

``<root>/<topic>/head.json`` is *advisory*: ``{"next_offset": N0, "partitions": {"0":
{"next_offset": N0}, "1": {"next_offset": N1}, ...}}`` — one file per topic with the next offset of
every partition; the top-level ``next_offset`` repeats partition 0's, which is the whole head of an
origin (single-partition) topic. It is rewritten atomically (temp file + rename) after every publish
call (``writer.py``). Like the origin, nothing trusts it: the truth is the line count of the
partition file.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import orjson

from ctxplane.runtime.exceptions import BusError, BusPositionError

__all__ = (
    "DEFAULT_MAX_RECORD_BYTES",
    "FILE_LINE",
    "O_CLOEXEC",
    "advance",
    "encode_line",
    "line_end",
    "parse_position",
    "partition_path",
    "scan_partitions",
    "topic_dir",
    "utc_now",
)

#: The offset kind of the file bus.
FILE_LINE: Final = "file_line"

#: The longest record the file bus hands out whole (the intake limit, contracts.intake.MAX_RECORD_BYTES,
#: by default): a longer line is cut to this many bytes and flagged with its full size.
DEFAULT_MAX_RECORD_BYTES: Final = 1024 * 1024

#: ``os.O_CLOEXEC`` where the platform has it: no descriptor of the bus leaks into a child process.
O_CLOEXEC: Final = getattr(os, "O_CLOEXEC", 0)

# Bytes asked of one pread while only counting newlines (moving a cursor, computing the end).
# bytes.count runs at memory speed; 1 MiB keeps the number of syscalls low without holding much.
_SCAN_CHUNK: Final = 1024 * 1024

_PARTITION_FILE: Final = re.compile(r"partition=(0|[1-9][0-9]*)\.jsonl")


def utc_now() -> str:
    """RFC 3339 UTC with exactly 6 fractional digits and ``Z`` (the envelope's timestamp format)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def encode_line(partition_key: str, payload: dict[str, Any], published_at: str) -> bytes:
    """One record line, without its ``\\n`` (orjson, compact).

    Raises:
        TypeError: the payload is not JSON-serialisable.
    """
    return orjson.dumps({"partition_key": partition_key, "payload": payload, "published_at_utc": published_at})


def parse_position(position: str) -> int:
    """A ``file_line`` position is a non-negative decimal line index (ASCII digits only)."""
    if not isinstance(position, str) or not (position.isascii() and position.isdigit()):
        raise BusPositionError(
            f"invalid file_line position {position!r}: expected a non-negative decimal line index"
        )
    return int(position)


def topic_dir(root: Path, topic: str) -> Path:
    """The topic's directory under ``root``.

    Raises:
        BusError: the name is not a single path component (it could leave the root).
    """
    if (
        not isinstance(topic, str)
        or not topic
        or topic in (".", "..")
        or any(ch in topic for ch in "/\\\x00")
    ):
        raise BusError(
            f"invalid topic name {topic!r}: it must be a non-empty single path component"
        )
    return root / topic


def partition_path(root: Path, topic: str, partition: int) -> Path:
    """The file of one partition (see the module docstring)."""
    return topic_dir(root, topic) / f"partition={partition}.jsonl"


def scan_partitions(directory: Path) -> list[int]:
    """Partition numbers of the ``partition=<n>.jsonl`` files in a topic's directory, ascending."""
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []
    numbers = []
    for name in names:
        match = _PARTITION_FILE.fullmatch(name)
        if match is not None:
            numbers.append(int(match.group(1)))
    numbers.sort()
    return numbers


def advance(fd: int, line_index: int, byte_offset: int, target: int | None) -> tuple[int, int]:
    """Move a line cursor forward by counting newlines.

    ``byte_offset`` must be where line ``line_index`` starts. Returns ``(line, offset)`` for line
    ``target``, or — when the file has fewer complete lines, or ``target`` is None — for the first
    line not yet complete (i.e. just after the last ``\\n``).
    """
    scan = byte_offset
    while target is None or line_index < target:
        chunk = os.pread(fd, _SCAN_CHUNK, scan)
        if not chunk:
            break
        found = chunk.count(b"\n")
        need = None if target is None else target - line_index
        if found and (need is None or found <= need):
            line_index += found
            byte_offset = scan + chunk.rfind(b"\n") + 1
        elif found:
            assert need is not None
            pos = -1
            for _ in range(need):
                pos = chunk.find(b"\n", pos + 1)
            return line_index + need, scan + pos + 1
        scan += len(chunk)
    return line_index, byte_offset


def line_end(fd: int, scan: int) -> int | None:
    """The file offset of the first ``\\n`` at or after ``scan``, or None when the file ends first.

    Reads ``_SCAN_CHUNK`` bytes at a time and keeps none of them: how an oversized line is skipped.
    """
    while True:
        chunk = os.pread(fd, _SCAN_CHUNK, scan)
        if not chunk:
            return None
        found = chunk.find(b"\n")
        if found >= 0:
            return scan + found
        scan += len(chunk)
