"""Publishing to Kinesis: PutRecords in calls of at most 500 records and 5 MiB, refused records re-sent.

A record's ``Data`` is the bare envelope JSON (what the origin publishes); keys longer than 256
characters are replaced by their SHA-256 hex. A record the service refuses for throughput is
retried alone, so it lands after records of its shard sent later in the same call: PutRecords
itself does not promise order across a partial failure (docs/operations.md §Limits and what to
watch). A chunk's failed call and its partly refused records spend one budget of attempts
(``client.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from hashlib import sha256
from typing import Any, Final

import anyio
import orjson

from ctxplane.runtime.bus.base import BusRef
from ctxplane.runtime.bus.kinesis.client import KinesisCalls, Transient
from ctxplane.runtime.bus.kinesis.progress import ShardProgress
from ctxplane.runtime.bus.kinesis.shards import KINESIS_SEQUENCE, partition_of_shard
from ctxplane.runtime.exceptions import BusError

__all__ = ("RecordPublisher", "encode_entries")

# PutRecords limits: 500 records and 5 MiB per call; 1 MiB per record; partition keys 1-256 chars.
_PUT_MAX_RECORDS: Final = 500
_PUT_MAX_BYTES: Final = 5 * 1024 * 1024
_RECORD_MAX_BYTES: Final = 1024 * 1024
_KEY_MAX_CHARS: Final = 256

Entry = dict[str, Any]  # one PutRecords entry: Data, PartitionKey


def encode_entries(topic: str, items: Sequence[tuple[str, Mapping[str, Any]]]) -> list[Entry]:
    """PutRecords entries for ``(partition_key, envelope)`` pairs, all encoded before anything is sent.

    Raises:
        TypeError: an envelope is not JSON-serialisable.
        BusError: a record over 1 MiB.
    """
    entries = []
    for partition_key, envelope in items:
        data = orjson.dumps(envelope)
        key = partition_key if len(partition_key) <= _KEY_MAX_CHARS else sha256(partition_key.encode()).hexdigest()
        if len(data) + len(key.encode()) > _RECORD_MAX_BYTES:
            raise BusError(f"a record of {len(data)} bytes exceeds Kinesis' 1 MiB record limit (topic {topic})")
        entries.append({"Data": data, "PartitionKey": key})
    return entries


def _chunks(entries: list[Entry]) -> list[tuple[int, list[Entry]]]:
    """Split PutRecords entries into calls of at most 500 records and 5 MiB."""
    out: list[tuple[int, list[Entry]]] = []
    start, size, current = 0, 0, []  # type: ignore[var-annotated]
    for index, entry in enumerate(entries):
        weight = len(entry["Data"]) + len(entry["PartitionKey"].encode())
        if current and (len(current) >= _PUT_MAX_RECORDS or size + weight > _PUT_MAX_BYTES):
            out.append((start, current))
            start, size, current = index, 0, []
        current.append(entry)
        size += weight
    if current:
        out.append((start, current))
    return out


class RecordPublisher:
    """Sends encoded entries to a stream that exists, noting every sequence number it gets back."""

    def __init__(self, calls: KinesisCalls, progress: ShardProgress) -> None:
        self._calls = calls
        self._progress = progress

    async def put(self, topic: str, stream: str, entries: list[Entry]) -> list[BusRef]:
        """Send ``entries`` in order; their refs come back in the same order.

        Raises:
            BusError: records still refused after every retry.
            BusUnavailable: a call still failing after every retry.
        """
        refs: list[BusRef | None] = [None] * len(entries)
        for start, chunk in _chunks(entries):
            await self._put_chunk(topic, stream, chunk, start, refs)
        return [ref for ref in refs if ref is not None]

    async def _put_chunk(self, topic: str, stream: str, chunk: list[Entry], start: int,
                         refs: list[BusRef | None]) -> None:
        # One budget of attempts for the chunk: a failed call and partly refused records both spend it.
        client = await self._calls.client()
        retry = self._calls.retry()
        todo = list(range(len(chunk)))
        while True:
            try:
                answer = await self._calls.attempt(client, "put_records", StreamName=stream,
                                                   Records=[chunk[i] for i in todo])
            except Transient as failure:
                await self._calls.back_off(retry, "put_records", stream, failure.reason)
                continue
            failed = []
            for index, result in zip(todo, answer["Records"], strict=True):
                if result.get("ErrorCode"):
                    failed.append(index)
                    continue
                partition = partition_of_shard(result["ShardId"])
                refs[start + index] = BusRef(topic, partition, result["SequenceNumber"], KINESIS_SEQUENCE)
                self._progress.seen((stream, partition), int(result["SequenceNumber"]))
            if not failed:
                return
            todo = failed
            pause = retry.failed()
            if retry.exhausted:
                raise BusError(
                    f"kinesis PutRecords to {stream}: {len(todo)} records still refused after {retry.failures} attempts")
            await anyio.sleep(pause)
