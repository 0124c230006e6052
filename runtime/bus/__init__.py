"""Event-bus adapters: one interface (:class:`EventBus`), the file bus, and partition routing.

Adapters move raw bytes between a bus and the partition actors; decoding and validation happen in
the pure intake core. See ``_base`` for the position model (opaque, exclusive-next).
"""

from __future__ import annotations

from runtime.bus._base import START_POSITIONS as START_POSITIONS
from runtime.bus._base import BusRecord as BusRecord
from runtime.bus._base import BusRef as BusRef
from runtime.bus._base import EventBus as EventBus
from runtime.bus._base import ReadResult as ReadResult
from runtime.bus._file import FILE_LINE as FILE_LINE
from runtime.bus._file import FileBus as FileBus
from runtime.bus._routing import partition_for as partition_for
from runtime.bus._routing import partition_key_for as partition_key_for

__all__ = (
    "FILE_LINE",
    "START_POSITIONS",
    "BusRecord",
    "BusRef",
    "EventBus",
    "FileBus",
    "ReadResult",
    "partition_for",
    "partition_key_for",
)
