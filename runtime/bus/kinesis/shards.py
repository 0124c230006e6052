"""Kinesis shards: their lineage as ListShards reports it, sequence numbers, and the drained mark.

Resharding (docs/operations.md §Resharding)
-------------------------------------------
A split or merge closes the parent shard(s) (``EndingSequenceNumber`` set) and opens children
(``ParentShardId`` / ``AdjacentParentShardId``). Parent-before-child ordering is the caller's
policy (``actors/ingest/leases.py``: a child's partition actor starts only once every parent's *committed
checkpoint* is drained); the adapter supplies the facts: the lineage (:meth:`ShardDirectory.list`)
and the *drained position*. When a read finds a closed shard exhausted, it returns
``next_position = max(position, EndingSequenceNumber)`` (``reader.py``), so the committed
checkpoint of a drained parent is ``>= EndingSequenceNumber`` — a durable "drained" mark any
process can check (:func:`is_drained`).

Positions are sequence numbers (decimal strings, offset kind ``kinesis_sequence``), compared
numerically (:func:`parse_position`), never as strings.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import anyio

from ctxplane.runtime.bus.kinesis.client import THROTTLED, KinesisCalls, error_code, http_status
from ctxplane.runtime.exceptions import BusError, BusPositionError

__all__ = (
    "KINESIS_SEQUENCE",
    "ShardDirectory",
    "ShardInfo",
    "is_drained",
    "parse_position",
    "partition_of_shard",
)

#: The offset kind of the Kinesis bus.
KINESIS_SEQUENCE: Final = "kinesis_sequence"

# An unknown shard (deleted stream, not yet listed) is re-listed at most this often.
_RELIST_S: Final = 1.0
# Creating a stream takes ~30 s on AWS, none on emulators; give up after this.
_CREATE_TIMEOUT_S: Final = 120.0

_SHARD_SUFFIX: Final = re.compile(r"(\d+)$")
_DIGITS: Final = re.compile(r"^[0-9]{1,128}$")


@dataclass(frozen=True, slots=True)
class ShardInfo:
    """One shard as listed by ListShards.

    Attributes:
        partition: The partition number (the shard id's integer suffix).
        shard_id: The shard id.
        parents: Partition numbers of ``ParentShardId`` and ``AdjacentParentShardId`` (0-2).
        starting_sequence: ``SequenceNumberRange.StartingSequenceNumber``.
        ending_sequence: ``SequenceNumberRange.EndingSequenceNumber``; ``None`` while open.
    """

    partition: int
    shard_id: str
    parents: tuple[int, ...]
    starting_sequence: str
    ending_sequence: str | None

    @property
    def closed(self) -> bool:
        return self.ending_sequence is not None


def partition_of_shard(shard_id: str) -> int:
    """``shardId-000000000003`` → 3.

    Raises:
        BusError: the id has no integer suffix.
    """
    match = _SHARD_SUFFIX.search(shard_id)
    if match is None:
        raise BusError(f"shard id {shard_id!r} has no integer suffix")
    return int(match.group(1))


def is_drained(shard: ShardInfo, position: str | None) -> bool:
    """Whether a committed ``position`` proves the closed ``shard`` fully consumed (the durable
    "drained" mark: a read that exhausts a closed shard returns ``max(position, ending)``)."""
    if shard.ending_sequence is None or position is None:
        return False
    return int(position) >= int(shard.ending_sequence)


def parse_position(position: str) -> int:
    """A ``kinesis_sequence`` position as the integer it names.

    Raises:
        BusPositionError: not a decimal sequence number.
    """
    if not isinstance(position, str) or not _DIGITS.match(position):
        raise BusPositionError(
            f"invalid kinesis_sequence position {position!r}: expected a decimal sequence number"
        )
    return int(position)


def _shard_info(raw: Mapping[str, Any]) -> ShardInfo:
    parents = tuple(
        partition_of_shard(raw[name]) for name in ("ParentShardId", "AdjacentParentShardId") if raw.get(name)
    )
    seq = raw.get("SequenceNumberRange", {})
    return ShardInfo(
        partition=partition_of_shard(raw["ShardId"]),
        shard_id=raw["ShardId"],
        parents=parents,
        starting_sequence=str(seq.get("StartingSequenceNumber", "0")),
        ending_sequence=seq.get("EndingSequenceNumber"),
    )


class ShardDirectory:
    """The shards of each stream, as last listed, and the streams known to exist (keyed by stream
    name; topics are the adapter's business)."""

    def __init__(self, calls: KinesisCalls) -> None:
        self._calls = calls
        self._shards: dict[str, dict[int, ShardInfo]] = {}  # stream -> partition -> info
        self._known_streams: set[str] = set()
        self._listed_at: dict[str, float] = {}

    def known(self, stream: str) -> bool:
        """Whether the last listing found the stream (no API call)."""
        return stream in self._known_streams

    def forget(self, stream: str) -> None:
        """Drop the cached shards of a stream that was not found, so the next lookup re-lists it."""
        self._shards.pop(stream, None)

    async def list(self, stream: str) -> dict[int, ShardInfo]:
        """List every shard of the stream, closed ones included (one paginated ListShards,
        through botocore's paginator — moto rejects a bare NextToken). ``{}`` if the stream does
        not exist. Refreshes the cached lineage that reads use."""
        client = await self._calls.client()
        client_errors, transport_errors, credential_errors = self._calls.errors
        found: dict[int, ShardInfo] = {}
        retry = self._calls.retry()
        while True:
            try:
                found = {}
                paginator = client.get_paginator("list_shards")
                async for page in paginator.paginate(StreamName=stream):
                    for raw in page.get("Shards", ()):
                        info = _shard_info(raw)
                        found[info.partition] = info
                break
            except credential_errors as exc:
                raise BusError(f"kinesis ListShards: {exc} (set AWS credentials / region, or bus.region)") from None
            except client_errors as exc:
                code = error_code(exc)
                if code == "ResourceNotFoundException":
                    self._shards.pop(stream, None)
                    self._known_streams.discard(stream)
                    return {}
                if code not in THROTTLED and (http_status(exc) or 0) < 500:
                    raise BusError(f"kinesis ListShards for stream {stream} failed: {code}") from None
                reason = f"error {code}"
            except transport_errors as exc:
                reason = f"unreachable ({type(exc).__name__})"
            await self._calls.back_off(retry, "ListShards", f"stream {stream}", reason)
        self._shards[stream] = found
        self._known_streams.add(stream)
        return dict(found)

    async def lookup(self, stream: str, partition: int) -> ShardInfo | None:
        """The cached shard info; an unknown shard is re-listed at most once per second (a reader
        polling a deleted stream must not turn every poll into a ListShards call)."""
        cached = self._shards.get(stream)
        if cached is None or partition not in cached:
            now = anyio.current_time()
            if now - self._listed_at.get(stream, -_RELIST_S) >= _RELIST_S:
                self._listed_at[stream] = now
                cached = await self.list(stream)
        return (cached or {}).get(partition)

    async def refreshed_closed(self, stream: str, shard: ShardInfo) -> ShardInfo:
        """The shard's info, re-listed if the cache still shows it open (a null NextShardIterator
        proves it closed, and its EndingSequenceNumber is then needed)."""
        if shard.closed:
            return shard
        return (await self.list(stream)).get(shard.partition, shard)

    async def create(self, stream: str, partitions: int) -> None:
        """CreateStream with ``partitions`` shards, then wait until it is ACTIVE. Idempotent when
        the stream exists with that many *open* shards.

        Raises:
            BusError: the stream exists with another open-shard count, or it never became ACTIVE.
        """
        client_errors = await self._calls.client_errors()
        try:
            await self._calls.call("create_stream", what=stream, StreamName=stream, ShardCount=partitions)
        except client_errors as exc:
            if error_code(exc) != "ResourceInUseException":
                raise BusError(f"kinesis CreateStream {stream} failed: {error_code(exc)}") from None
            await self._wait_active(stream)
            open_shards = [s for s in (await self.list(stream)).values() if not s.closed]
            if len(open_shards) != partitions:
                raise BusError(
                    f"stream {stream} already exists with {len(open_shards)} open shards, not {partitions}"
                ) from None
            return
        await self._wait_active(stream)
        await self.list(stream)

    async def _wait_active(self, stream: str) -> None:
        delay = 0.05
        deadline = anyio.current_time() + _CREATE_TIMEOUT_S
        while True:
            answer = await self._calls.call("describe_stream_summary", what=stream, StreamName=stream)
            status = answer["StreamDescriptionSummary"]["StreamStatus"]
            if status == "ACTIVE":
                return
            if anyio.current_time() > deadline:
                raise BusError(f"stream {stream} is still {status} after {_CREATE_TIMEOUT_S:.0f}s")
            await anyio.sleep(delay)
            delay = min(delay * 2, 1.0)
