"""Event-bus adapters: one interface (:class:`EventBus`), the file bus, Kinesis, and partition routing.

Adapters move raw bytes between a bus and the partition actors; decoding and validation happen in
the pure intake core. See ``base.py`` for the position model (opaque, exclusive-next).
"""

from __future__ import annotations

from ctxplane.runtime.bus.base import START_POSITIONS as START_POSITIONS
from ctxplane.runtime.bus.base import BusRecord as BusRecord
from ctxplane.runtime.bus.base import BusRef as BusRef
from ctxplane.runtime.bus.base import EventBus as EventBus
from ctxplane.runtime.bus.base import ReadResult as ReadResult
from ctxplane.runtime.bus.file import FILE_LINE as FILE_LINE
from ctxplane.runtime.bus.file import FileBus as FileBus
from ctxplane.runtime.bus.kinesis import KINESIS_SEQUENCE as KINESIS_SEQUENCE
from ctxplane.runtime.bus.kinesis import BusUnavailable as BusUnavailable
from ctxplane.runtime.bus.kinesis import KinesisBus as KinesisBus
from ctxplane.runtime.bus.kinesis import ShardInfo as ShardInfo
from ctxplane.runtime.bus.kinesis import is_drained as is_drained
from ctxplane.runtime.bus.kinesis import (
    kinesis_bus_from_settings as kinesis_bus_from_settings,
)
from ctxplane.runtime.bus.routing import partition_for as partition_for
from ctxplane.runtime.bus.routing import partition_key_for as partition_key_for

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
