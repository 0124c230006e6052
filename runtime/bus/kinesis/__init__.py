"""The Kinesis bus adapter (docs/operations.md §Kinesis and scale-out): topics are streams, shards
are partitions, positions are sequence numbers.

- ``adapter.py``: :class:`KinesisBus`, the :class:`EventBus` (topic → stream mapping) and
  :func:`kinesis_bus_from_settings`;
- ``client.py``: the aiobotocore client, credentials and endpoint, and the retry policy of every call;
- ``shards.py``: shard lineage (ListShards), sequence numbers, the drained mark, stream creation;
- ``reader.py``: per-shard cursors, shard iterators, the per-shard read budget, the backlog probe;
- ``publisher.py``: PutRecords in chunks, partly refused records re-sent;
- ``progress.py``: the newest sequence number seen and ``MillisBehindLatest`` per shard.
"""

from __future__ import annotations

from ctxplane.runtime.bus.kinesis.adapter import KinesisBus as KinesisBus
from ctxplane.runtime.bus.kinesis.adapter import kinesis_bus_from_settings as kinesis_bus_from_settings
from ctxplane.runtime.bus.kinesis.client import BusUnavailable as BusUnavailable
from ctxplane.runtime.bus.kinesis.shards import KINESIS_SEQUENCE as KINESIS_SEQUENCE
from ctxplane.runtime.bus.kinesis.shards import ShardInfo as ShardInfo
from ctxplane.runtime.bus.kinesis.shards import is_drained as is_drained
from ctxplane.runtime.bus.kinesis.shards import partition_of_shard as partition_of_shard

__all__ = (
    "KINESIS_SEQUENCE",
    "BusUnavailable",
    "KinesisBus",
    "ShardInfo",
    "is_drained",
    "kinesis_bus_from_settings",
    "partition_of_shard",
)
