"""The file bus adapter: the embedded default event bus, JSON-lines files under ``bus.root``
(docs/configuration.md), byte-compatible with the origin platform's.

- ``adapter.py``: :class:`FileBus`, the :class:`EventBus` (positions, backlog, lifecycle);
- ``layout.py``: the on-disk layout and line format, positions, limits, topic and partition
  discovery, and the newline scanning every read and count is built on;
- ``partitions.py``: per-partition state between calls (the reader's cursor, the line count);
- ``reader.py``: reading records from a cursor in bounded batches;
- ``writer.py``: creating topics and appending records durably, then the advisory head.
"""

from __future__ import annotations

from ctxplane.runtime.bus.file.adapter import FileBus as FileBus
from ctxplane.runtime.bus.file.layout import DEFAULT_MAX_RECORD_BYTES as DEFAULT_MAX_RECORD_BYTES
from ctxplane.runtime.bus.file.layout import FILE_LINE as FILE_LINE

__all__ = ("DEFAULT_MAX_RECORD_BYTES", "FILE_LINE", "FileBus")
