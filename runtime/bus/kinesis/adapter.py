"""The Kinesis bus: topics are streams, shards are partitions, positions are sequence numbers.

Mapping (docs/operations.md §Kinesis and scale-out)
---------------------------------------------------
- A topic reads from the stream ``bus.streams[topic]``, or from the stream named as the topic when
  the mapping has no entry (or maps it to ``auto``, ``topic`` or an empty string, as the origin did).
- A partition is a shard; its number is the integer suffix of the shard id
  (``shardId-000000000003`` → 3). Closed shards (split or merged parents) are listed too: a
  consumer must finish them before their children (``shards.py``).
- A record's offset is its ``SequenceNumber`` (a decimal string, offset kind ``kinesis_sequence``);
  its ``raw`` is the record's ``Data`` bytes exactly (the origin publishes the bare envelope JSON).
- A position is the last sequence number processed of the shard, exclusive-next (``reader.py``).

:class:`KinesisBus` is the :class:`EventBus` over the package's parts: the client and its retries
(``client.py``), the shard directory (``shards.py``), the reader (``reader.py``), the publisher
(``publisher.py``) and what is known of each shard's end (``progress.py``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

from ctxplane.runtime.bus.base import START_POSITIONS, Backlog, BusRef, EventBus, ReadResult
from ctxplane.runtime.bus.kinesis.client import ClientFactory, KinesisCalls, is_loopback
from ctxplane.runtime.bus.kinesis.progress import ShardProgress
from ctxplane.runtime.bus.kinesis.publisher import RecordPublisher, encode_entries
from ctxplane.runtime.bus.kinesis.reader import READS_PER_SECOND, ShardReader
from ctxplane.runtime.bus.kinesis.shards import KINESIS_SEQUENCE, ShardDirectory, ShardInfo, parse_position
from ctxplane.runtime.exceptions import BusClosed, BusError, UsageError

__all__ = ("KinesisBus", "kinesis_bus_from_settings")

_STREAM_NAME: Final = re.compile(r"^[a-zA-Z0-9_.-]{1,128}$")
_AUTO_NAMES: Final = frozenset({"", "auto", "topic"})


class KinesisBus(EventBus):
    """An :class:`EventBus` over Amazon Kinesis Data Streams (or an emulator), on aioboto3.

    Args:
        streams: topic → stream name (default: the topic's own name).
        start_position: where a shard without checkpoint starts (``trim_horizon`` | ``latest``).
        endpoint_url: ``None`` for AWS; e.g. ``http://127.0.0.1:4567`` for an emulator.
        region: the AWS region (required unless the endpoint is loopback).
        reads_per_second: GetRecords calls per shard per second (Kinesis allows 5).
        client_factory: for tests — returns an async context manager yielding a client with the
            aiobotocore kinesis methods; default: one aioboto3 client, opened on first use.
        read_timeout_s, connect_timeout_s: botocore timeouts per call.

    One client serves every call; it is created lazily in the caller's event loop and closed by
    :meth:`aclose` (``client.py``).
    """

    offset_kind = KINESIS_SEQUENCE

    def __init__(
        self,
        *,
        streams: Mapping[str, str] | None = None,
        start_position: str = "trim_horizon",
        endpoint_url: str | None = None,
        region: str | None = None,
        reads_per_second: float = READS_PER_SECOND,
        client_factory: ClientFactory | None = None,
        read_timeout_s: float = 10.0,
        connect_timeout_s: float = 5.0,
    ) -> None:
        if start_position not in START_POSITIONS:
            raise ValueError(f"start_position must be one of {START_POSITIONS}, got {start_position!r}")
        if not reads_per_second > 0:
            raise ValueError(f"reads_per_second must be > 0, got {reads_per_second!r}")
        self._streams = dict(streams or {})
        self._calls = KinesisCalls(
            endpoint_url=endpoint_url, region=region, client_factory=client_factory,
            read_timeout_s=read_timeout_s, connect_timeout_s=connect_timeout_s,
        )
        self._shards = ShardDirectory(self._calls)
        self._progress = ShardProgress()
        self._reader = ShardReader(self._calls, self._shards, self._progress, start_position=start_position,
                                   read_interval_s=1.0 / reads_per_second)
        self._publisher = RecordPublisher(self._calls, self._progress)

    @property
    def region(self) -> str | None:
        """The AWS region (``None``: botocore's own default chain decides)."""
        return self._calls.region

    def _check_open(self) -> None:
        if self._calls.closed:
            raise BusClosed("the Kinesis bus is closed")

    # -- names ----------------------------------------------------------------------------------

    def stream_of(self, topic: str) -> str:
        """The stream a topic reads from / publishes to.

        Raises:
            BusError: the resulting name is not a valid stream name.
        """
        name = self._streams.get(topic, "")
        if name.strip() in _AUTO_NAMES:
            name = topic
        if not _STREAM_NAME.match(name):
            raise BusError(f"invalid Kinesis stream name {name!r} for topic {topic!r} (allowed: [a-zA-Z0-9_.-]{{1,128}})")
        return name

    # -- shards ---------------------------------------------------------------------------------

    async def shards(self, topic: str) -> dict[int, ShardInfo]:
        """List every shard of the topic's stream, closed ones included; ``{}`` if the stream does
        not exist. Refreshes the cached lineage that reads use (:meth:`ShardDirectory.list`)."""
        return await self._shards.list(self.stream_of(topic))

    async def list_partitions(self, topic: str) -> list[int]:
        """See :meth:`EventBus.list_partitions`: every shard, open or closed, ascending."""
        return sorted(await self.shards(topic))

    # -- reading --------------------------------------------------------------------------------

    async def read(
        self,
        topic: str,
        partition: int,
        position: str | None,
        max_records: int,
        max_bytes: int,
    ) -> ReadResult:
        """See :meth:`EventBus.read` and ``reader.py`` (cursor, rate limit, drained position). An
        unknown shard reads as empty. While nothing was ever read from a shard with no checkpoint,
        ``next_position`` stays ``None``."""
        self._check_open()
        if max_records < 1 or max_bytes < 1:
            raise ValueError(f"max_records and max_bytes must be >= 1, got {max_records} and {max_bytes}")
        if position is not None:
            parse_position(position)
        return await self._reader.read(topic, self.stream_of(topic), partition, position, max_records, max_bytes)

    async def end_position(self, topic: str, partition: int) -> str:
        """The newest sequence number seen on the shard by this adapter (no API call; see
        ``progress.py``), or ``"0"`` when none was seen."""
        self._check_open()
        return str(self._progress.last_seen((self.stream_of(topic), partition)))

    async def backlog(self, topic: str, partition: int, position: str | None) -> Backlog:
        """Whether a record follows ``position``, and ``MillisBehindLatest``; ``end`` and ``lag``
        are unknown except for a drained closed shard (:meth:`ShardReader.backlog`: one of the
        shard's 5 reads per second)."""
        self._check_open()
        return await self._reader.backlog(topic, self.stream_of(topic), partition, position)

    def behind_latest_ms(self, topic: str, partition: int) -> int | None:
        """``MillisBehindLatest`` of the shard's last GetRecords answer (no API call), or ``None``
        when there was none lately (``progress.py``)."""
        try:
            key = (self.stream_of(topic), partition)
        except BusError:
            return None
        return self._progress.behind_ms(key)

    def compare_positions(self, a: str, b: str) -> int:
        left, right = parse_position(a), parse_position(b)
        return (left > right) - (left < right)

    # -- publishing -----------------------------------------------------------------------------

    async def publish(
        self, topic: str, partition_key: str, envelope: Mapping[str, Any], *, partitions: int | None = None
    ) -> BusRef:
        """See :meth:`EventBus.publish`: one PutRecords call of one record."""
        return (await self.publish_many(topic, [(partition_key, envelope)], partitions=partitions))[0]

    async def publish_many(
        self,
        topic: str,
        items: Sequence[tuple[str, Mapping[str, Any]]],
        *,
        partitions: int | None = None,
    ) -> list[BusRef]:
        """Publish with PutRecords (``publisher.py``); the stream is created (with ``partitions``
        shards, default 1) if it does not exist.

        Raises:
            TypeError: an envelope is not JSON-serialisable (nothing is sent).
            BusError: a record over 1 MiB, a bad stream name, or records still refused after
                every retry.
        """
        self._check_open()
        stream = self.stream_of(topic)
        entries = encode_entries(topic, items)
        if not entries:
            return []
        if not self._shards.known(stream) and not await self.shards(topic):
            await self.create_topic(topic, partitions or 1)
        return await self._publisher.put(topic, stream, entries)

    async def create_topic(self, topic: str, partitions: int) -> None:
        """CreateStream with ``partitions`` shards, then wait until it is ACTIVE. Idempotent when
        the stream exists with that many *open* shards.

        Raises:
            ValueError: ``partitions < 1``.
            BusError: the stream exists with another open-shard count, or it never became ACTIVE.
        """
        if partitions < 1:
            raise ValueError(f"partitions must be >= 1, got {partitions}")
        await self._shards.create(self.stream_of(topic), partitions)

    async def aclose(self) -> None:
        await self._calls.aclose()


def kinesis_bus_from_settings(bus: Any) -> KinesisBus:
    """Build the adapter from a ``bus`` settings section (:class:`ctxplane.config.settings.BusSettings`).

    Raises:
        UsageError: no region is configured (``bus.region``, ``AWS_REGION``, ``AWS_DEFAULT_REGION``)
            and the endpoint is not a loopback emulator.
    """
    region = bus.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region is None:
        if not is_loopback(bus.endpoint_url):
            raise UsageError("bus.region: not set, and neither AWS_REGION nor AWS_DEFAULT_REGION is")
        region = "us-east-1"  # emulators accept any region
    return KinesisBus(
        streams=bus.streams, start_position=bus.start_position, endpoint_url=bus.endpoint_url, region=region
    )
