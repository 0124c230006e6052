"""Event-bus adapters: one interface (:class:`EventBus`), the file bus, Kinesis, and partition routing.

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
from runtime.bus._kinesis import KINESIS_SEQUENCE as KINESIS_SEQUENCE
from runtime.bus._kinesis import BusUnavailable as BusUnavailable
from runtime.bus._kinesis import KinesisBus as KinesisBus
from runtime.bus._kinesis import ShardInfo as ShardInfo
from runtime.bus._kinesis import is_drained as is_drained
from runtime.bus._kinesis import kinesis_bus_from_settings as kinesis_bus_from_settings
from runtime.bus._routing import partition_for as partition_for
from runtime.bus._routing import partition_key_for as partition_key_for

__all__ = (
    "FILE_LINE",
    "KINESIS_SEQUENCE",
    "START_POSITIONS",
    "BusRecord",
    "BusRef",
    "BusUnavailable",
    "EventBus",
    "FileBus",
    "KinesisBus",
    "ReadResult",
    "ShardInfo",
    "is_drained",
    "kinesis_bus_from_settings",
    "partition_for",
    "partition_key_for",
)
