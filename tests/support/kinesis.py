"""Kinesis for tests: the loopback emulator (`make test` starts it), configs pointing at it, and an
in-memory fake client with AWS semantics for what the emulator cannot do (throttling, expiring
iterators, closed shards that return a null NextShardIterator, an EndingSequenceNumber that is a
bound above the last record).
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.support.process import ctxplane, write_config

#: Fake credentials for spawned processes: nothing may reach outside the machine (no EC2 metadata).
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def kinesis_endpoint() -> str:
    """The emulator started by `make test` (ops/kinesis_up.sh); skips without one, unless
    CTXPLANE_REQUIRE_KINESIS is set (then it fails)."""
    endpoint = os.environ.get("CTXPLANE_TEST_KINESIS_ENDPOINT")
    if not endpoint:
        if os.environ.get("CTXPLANE_REQUIRE_KINESIS"):
            pytest.fail("CTXPLANE_REQUIRE_KINESIS is set but CTXPLANE_TEST_KINESIS_ENDPOINT is not")
        pytest.skip("Kinesis emulator not started (run the suite with `make test`)")
    for name, value in AWS_ENV.items():
        os.environ.setdefault(name, value)
    return endpoint


def stream_names(topics: Sequence[str]) -> dict[str, str]:
    """Unique stream names for ``topics`` (tests share one emulator)."""
    prefix = f"t{uuid.uuid4().hex[:10]}-"
    return {topic: prefix + topic for topic in topics}


def kinesis_config(directory: Path, dsn: str, endpoint: str, streams: Mapping[str, str], **sections: dict[str, Any]) -> Path:
    """A config for `ctxplane run` over the emulator (other sections as write_config)."""
    bus = {"kind": "kinesis", "endpoint_url": endpoint, "region": "us-east-1", "streams": dict(streams)}
    bus.update(sections.pop("bus", {}))
    directory.mkdir(parents=True, exist_ok=True)
    return write_config(directory, dsn, bus=bus, **sections)


async def publish_kinesis(
    endpoint: str, streams: Mapping[str, str], items: Mapping[str, Sequence[dict[str, Any]]], *, shards: int
) -> None:
    """Create each topic's stream with ``shards`` shards (if needed) and publish its envelopes."""
    from ctxplane.runtime.bus import KinesisBus, partition_key_for

    async with KinesisBus(endpoint_url=endpoint, region="us-east-1", streams=streams) as bus:
        for topic, envelopes in items.items():
            if not await bus.list_partitions(topic):
                await bus.create_topic(topic, shards)
            if envelopes:
                await bus.publish_many(topic, [(partition_key_for(e), e) for e in envelopes])


def file_bus_digest(directory: Path, items: Mapping[str, Sequence[dict[str, Any]]], **sections: dict[str, Any]) -> str:
    """The state digest of one `ctxplane run --once` over a file bus holding ``items``: the
    reference every Kinesis run of the same events must match."""
    from ctxplane.runtime.bus import FileBus, partition_key_for

    directory.mkdir(parents=True, exist_ok=True)

    async def publish() -> None:
        async with FileBus(directory / "eb") as bus:
            for topic, envelopes in items.items():
                await bus.create_topic(topic, 2)
                await bus.publish_many(topic, [(partition_key_for(e), e) for e in envelopes])

    anyio.run(publish)
    config = write_config(directory, f"sqlite:///{directory / 'ref.sqlite'}", **sections)
    run = ctxplane("run", "--config", str(config), "--once")
    assert run.returncode == 0, run.stderr[-3000:]
    digest = ctxplane("digest", "--config", str(config))
    assert digest.returncode == 0, digest.stderr
    return digest.stdout.strip()


# -- an in-memory Kinesis client with AWS semantics ------------------------------------------------


def client_error(code: str, operation: str, status: int = 400) -> Exception:
    from botocore.exceptions import ClientError

    error: Exception = ClientError({"Error": {"Code": code, "Message": f"fake {code}"},
                                    "ResponseMetadata": {"HTTPStatusCode": status}}, operation)
    return error


@dataclass
class FakeShard:
    shard_id: str
    start_hash: int
    end_hash: int
    parents: tuple[str, ...] = ()
    records: list[tuple[int, bytes, str]] = field(default_factory=list)  # (sequence, data, key)
    ending: int | None = None  # EndingSequenceNumber once closed (a bound, as on AWS)


@dataclass
class _Iterator:
    stream: str
    shard: str
    after: int  # the last sequence consumed
    expired: bool = False


class FakeKinesis:
    """Enough of the aiobotocore kinesis client for KinesisBus, with AWS semantics.

    Test hooks: ``fail`` (operation → list of error codes raised by the next calls), ``calls``
    (operation, monotonic time) log, :meth:`split` and :meth:`expire_iterators`.
    """

    def __init__(self, page_size: int = 2) -> None:
        self.streams: dict[str, dict[str, FakeShard]] = {}
        self.iterators: dict[str, _Iterator] = {}
        self.fail: dict[str, list[str]] = defaultdict(list)
        self.calls: list[tuple[str, float]] = []
        self._sequence = 49_000_000_000_000_000_000
        self._page_size = page_size

    # context manager: a KinesisBus client_factory may return the client itself
    async def __aenter__(self) -> FakeKinesis:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def _enter(self, operation: str) -> None:
        self.calls.append((operation, anyio.current_time()))
        if self.fail[operation]:
            raise client_error(self.fail[operation].pop(0), operation)

    def _stream(self, name: str, operation: str) -> dict[str, FakeShard]:
        if name not in self.streams:
            raise client_error("ResourceNotFoundException", operation)
        return self.streams[name]

    async def create_stream(self, StreamName: str, ShardCount: int) -> dict[str, Any]:  # noqa: N803
        self._enter("create_stream")
        if StreamName in self.streams:
            raise client_error("ResourceInUseException", "create_stream")
        step = 2**128 // ShardCount
        self.streams[StreamName] = {
            f"shardId-{i:012d}": FakeShard(f"shardId-{i:012d}", i * step, (2**128 - 1) if i == ShardCount - 1 else (i + 1) * step - 1)
            for i in range(ShardCount)
        }
        return {}

    async def describe_stream_summary(self, StreamName: str) -> dict[str, Any]:  # noqa: N803
        self._enter("describe_stream_summary")
        self._stream(StreamName, "describe_stream_summary")
        return {"StreamDescriptionSummary": {"StreamStatus": "ACTIVE"}}

    def get_paginator(self, name: str) -> Any:
        assert name == "list_shards"
        fake = self

        class Paginator:
            async def paginate(self, StreamName: str) -> AsyncIterator[dict[str, Any]]:  # noqa: N803
                fake._enter("list_shards")
                shards = [fake._describe(s) for s in fake._stream(StreamName, "list_shards").values()]
                for start in range(0, len(shards), fake._page_size):
                    yield {"Shards": shards[start : start + fake._page_size]}

        return Paginator()

    def _describe(self, shard: FakeShard) -> dict[str, Any]:
        rng: dict[str, Any] = {"StartingSequenceNumber": str(shard.records[0][0] if shard.records else self._sequence)}
        if shard.ending is not None:
            rng["EndingSequenceNumber"] = str(shard.ending)
        out: dict[str, Any] = {"ShardId": shard.shard_id, "SequenceNumberRange": rng,
                               "HashKeyRange": {"StartingHashKey": str(shard.start_hash), "EndingHashKey": str(shard.end_hash)}}
        if shard.parents:
            out["ParentShardId"] = shard.parents[0]
        if len(shard.parents) > 1:
            out["AdjacentParentShardId"] = shard.parents[1]
        return out

    async def get_shard_iterator(self, StreamName: str, ShardId: str, ShardIteratorType: str,  # noqa: N803
                                 StartingSequenceNumber: str | None = None) -> dict[str, Any]:  # noqa: N803
        self._enter("get_shard_iterator")
        shard = self._stream(StreamName, "get_shard_iterator").get(ShardId)
        if shard is None:
            raise client_error("ResourceNotFoundException", "get_shard_iterator")
        if ShardIteratorType == "TRIM_HORIZON":
            after = 0
        elif ShardIteratorType == "LATEST":
            after = shard.records[-1][0] if shard.records else self._sequence
        elif ShardIteratorType == "AFTER_SEQUENCE_NUMBER":
            after = int(StartingSequenceNumber or "0")
            if shard.records and after < shard.records[0][0] - 1 and after != 0:
                raise client_error("InvalidArgumentException", "get_shard_iterator")
        else:
            raise client_error("InvalidArgumentException", "get_shard_iterator")
        token = uuid.uuid4().hex
        self.iterators[token] = _Iterator(StreamName, ShardId, after)
        return {"ShardIterator": token}

    async def get_records(self, ShardIterator: str, Limit: int) -> dict[str, Any]:  # noqa: N803
        self._enter("get_records")
        it = self.iterators.get(ShardIterator)
        if it is None:
            raise client_error("InvalidArgumentException", "get_records")
        if it.expired:
            raise client_error("ExpiredIteratorException", "get_records")
        shard = self.streams[it.stream][it.shard]
        ahead = [r for r in shard.records if r[0] > it.after]
        taken = ahead[:Limit]
        last = taken[-1][0] if taken else it.after
        rest = len(ahead) - len(taken)
        answer: dict[str, Any] = {
            "Records": [{"SequenceNumber": str(s), "Data": d, "PartitionKey": k} for s, d, k in taken],
            "MillisBehindLatest": 1000 if rest else 0,
        }
        if shard.ending is None or rest:
            # (A closed shard read to its end gets no NextShardIterator, as on AWS.)
            token = uuid.uuid4().hex
            self.iterators[token] = _Iterator(it.stream, it.shard, last)
            answer["NextShardIterator"] = token
        return answer

    async def put_records(self, StreamName: str, Records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:  # noqa: N803
        self._enter("put_records")
        shards = self._stream(StreamName, "put_records")
        assert len(Records) <= 500
        results = []
        for entry in Records:
            key = entry["PartitionKey"]
            point = int(hashlib.md5(key.encode()).hexdigest(), 16)
            shard = next(s for s in shards.values() if s.ending is None and s.start_hash <= point <= s.end_hash)
            self._sequence += 7
            shard.records.append((self._sequence, bytes(entry["Data"]), key))
            results.append({"SequenceNumber": str(self._sequence), "ShardId": shard.shard_id})
        return {"FailedRecordCount": 0, "Records": results}

    # -- test hooks -------------------------------------------------------------------------------

    def split(self, stream: str, shard_id: str) -> tuple[str, str]:
        """SplitShard at the middle of the hash range: the parent closes (keeping its records);
        two children open. Returns the children's ids."""
        shards = self.streams[stream]
        parent = shards[shard_id]
        parent.ending = (parent.records[-1][0] if parent.records else self._sequence) + 10**9
        middle = (parent.start_hash + parent.end_hash) // 2
        base = len(shards)
        ids = (f"shardId-{base:012d}", f"shardId-{base + 1:012d}")
        shards[ids[0]] = FakeShard(ids[0], parent.start_hash, middle, parents=(shard_id,))
        shards[ids[1]] = FakeShard(ids[1], middle + 1, parent.end_hash, parents=(shard_id,))
        return ids

    def expire_iterators(self) -> None:
        for it in self.iterators.values():
            it.expired = True
