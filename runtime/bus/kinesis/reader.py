"""Reading Kinesis shards: one cursor per shard, cached shard iterators, and the shard's read budget.

Reading (docs/operations.md §How reading works)
-----------------------------------------------
A position is the **last sequence number processed** of the shard, so it is exclusive-next: a
reader resumes with ``AFTER_SEQUENCE_NUMBER``. ``None`` (no checkpoint) starts at ``TRIM_HORIZON``
or ``LATEST`` per ``start_position`` — except that a child shard always starts at
``TRIM_HORIZON``, because its first records continue its parents' keys. While nothing has been read
yet, :meth:`ShardReader.read` keeps returning ``next_position=None``: there is no sequence number
to name, and that keeps the partition actor from committing an empty checkpoint.

Each shard keeps a cursor: the position its cached shard iterator continues from, the iterator, and
records already fetched but not yet returned (a GetRecords answer may exceed ``max_bytes``). A read
from the cursor's position continues with no extra call; any other position gets a fresh iterator.
Iterators are re-fetched before Kinesis' 5-minute expiry, and on ``ExpiredIteratorException`` /
``InvalidArgumentException`` (and the plain HTTP 500 moto returns for a bad iterator) the reader
gets a new one from the same position: a stale iterator never loses or repeats a record. A stale
*sequence number* (``GetShardIterator`` refuses ``AFTER_SEQUENCE_NUMBER``, e.g. the data expired or
the stream was re-created) falls back to ``TRIM_HORIZON`` with a warning; the checkpoint never moves
backward, and records seen again are counted as duplicates by intake.

Rate limits: Kinesis allows 5 GetRecords per shard per second (shared by every consumer of the
shard). Reads of one shard are spaced ``1 / reads_per_second`` apart; failed calls are retried as
``client.py`` says.

Drained: a closed shard is exhausted when ``NextShardIterator`` is null (AWS, kinesalite), or the
position reached ``EndingSequenceNumber`` (moto, whose closed shards always return an iterator and
whose ``EndingSequenceNumber`` is the last record's), or after two consecutive empty answers at the
tip (``MillisBehindLatest == 0``) on a closed shard. The read then returns
``max(position, EndingSequenceNumber)``: the drained mark of ``shards.py``.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Final

import anyio
import structlog

from ctxplane.runtime.bus.base import Backlog, BusRecord, ReadResult
from ctxplane.runtime.bus.kinesis.client import BusUnavailable, KinesisCalls, error_code, http_status
from ctxplane.runtime.bus.kinesis.progress import ShardKey, ShardProgress
from ctxplane.runtime.bus.kinesis.shards import KINESIS_SEQUENCE, ShardDirectory, ShardInfo, is_drained
from ctxplane.runtime.exceptions import BusError

__all__ = ("READS_PER_SECOND", "ShardReader")

log = structlog.get_logger("ctxplane.bus.kinesis")

#: Kinesis' documented per-shard read ceiling (GetRecords calls per second, all consumers together).
READS_PER_SECOND: Final = 5.0
# GetRecords returns at most 10,000 records per call.
_GET_RECORDS_LIMIT: Final = 10_000
# Iterators expire after 5 minutes; refresh a little earlier rather than pay for a failed call.
_ITERATOR_TTL_S: Final = 280.0
# Empty answers while MillisBehindLatest > 0 (a sparse stretch of the shard) are followed within
# one read, up to this many calls, so a read never reports "nothing new" while records are ahead.
_EMPTY_FOLLOW: Final = 3


@dataclass(slots=True)
class _Cursor:
    """Where one shard's cached iterator stands (see the module docstring)."""

    position: str | None
    iterator: str | None = None
    fetched_at: float = 0.0
    pending: deque[BusRecord] = field(default_factory=deque)
    empty_at_tip: int = 0
    exhausted: bool = False


class ShardReader:
    """Reads shards for one adapter (see the module docstring).

    Args:
        calls: the adapter's client.
        shards: the adapter's shard directory.
        progress: where sequence numbers seen and ``MillisBehindLatest`` are noted.
        start_position: where a shard without checkpoint starts (``trim_horizon`` | ``latest``).
        read_interval_s: the least time between two GetRecords on one shard.
    """

    def __init__(
        self,
        calls: KinesisCalls,
        shards: ShardDirectory,
        progress: ShardProgress,
        *,
        start_position: str,
        read_interval_s: float,
    ) -> None:
        self._calls = calls
        self._shards = shards
        self._progress = progress
        self._start_position = start_position
        self._read_interval_s = read_interval_s
        #: One cursor per (stream, partition); dropping one only costs a fresh iterator.
        self.cursors: dict[ShardKey, _Cursor] = {}
        self._shard_locks: dict[ShardKey, anyio.Lock] = {}
        self._next_read_at: dict[ShardKey, float] = {}

    async def read(
        self,
        topic: str,
        stream: str,
        partition: int,
        position: str | None,
        max_records: int,
        max_bytes: int,
    ) -> ReadResult:
        """Read the shard after ``position`` (arguments checked by the caller). An unknown shard
        reads as empty. While nothing was ever read from a shard with no checkpoint,
        ``next_position`` stays ``None``."""
        key = (stream, partition)
        lock = self._shard_locks.setdefault(key, anyio.Lock())
        async with lock:  # one reader per shard at a time: the cursor is not shared state to race on
            shard = await self._shards.lookup(stream, partition)
            if shard is None:
                return ReadResult([], position)  # type: ignore[arg-type]
            if is_drained(shard, position):
                return ReadResult([], position)  # type: ignore[arg-type]
            cursor = self.cursors.get(key)
            if cursor is None or cursor.position != position:
                cursor = self.cursors[key] = _Cursor(position)
            if not cursor.pending and not cursor.exhausted:
                await self._fetch(topic, stream, shard, cursor, max_records)
            records: list[BusRecord] = []
            size = 0
            while cursor.pending and len(records) < max_records:
                record = cursor.pending[0]
                if records and size + len(record.raw) > max_bytes:
                    break
                cursor.pending.popleft()
                records.append(record)
                size += len(record.raw)
            if records:
                cursor.position = records[-1].offset
                cursor.empty_at_tip = 0
                return ReadResult(records, cursor.position)
            if cursor.exhausted:
                shard = await self._shards.refreshed_closed(stream, shard)
                if shard.ending_sequence is not None:
                    ending = shard.ending_sequence
                    drained = ending if position is None or int(ending) > int(position) else position
                    cursor.position = drained
                    self._progress.seen(key, int(ending))
                    log.info("closed shard drained", topic=topic, partition=partition, stream=stream,
                             ending_sequence=ending)
                    return ReadResult([], drained)
                cursor.exhausted = False  # listed open after all: keep reading
            return ReadResult([], position)  # type: ignore[arg-type]

    async def _fetch(self, topic: str, stream: str, shard: ShardInfo, cursor: _Cursor, max_records: int) -> None:
        """Fill ``cursor.pending`` with the next GetRecords answer(s), or mark it exhausted."""
        key = (stream, shard.partition)
        client_errors = await self._calls.client_errors()
        refetches = 0
        for _ in range(_EMPTY_FOLLOW):
            if cursor.iterator is None or time.monotonic() - cursor.fetched_at > _ITERATOR_TTL_S:
                cursor.iterator = await self._iterator(topic, stream, shard, cursor.position)
                cursor.fetched_at = time.monotonic()
            await self._pace(key)
            try:
                answer = await self._calls.call(
                    "get_records", what=f"{stream}/{shard.shard_id}",
                    ShardIterator=cursor.iterator, Limit=min(max(max_records, 1), _GET_RECORDS_LIMIT),
                )
            except client_errors as exc:
                code = error_code(exc)
                status = http_status(exc) or 0
                if code in ("ExpiredIteratorException", "InvalidArgumentException") or status >= 500:
                    # A stale or refused iterator: get a fresh one from the same position.
                    refetches += 1
                    if refetches > 3:
                        raise BusUnavailable(
                            f"kinesis GetRecords on {stream}/{shard.shard_id} keeps refusing fresh iterators ({code})"
                        ) from None
                    log.info("shard iterator refused; re-getting it", topic=topic, partition=shard.partition,
                             code=code, position=cursor.position)
                    cursor.iterator = None
                    continue
                if code == "ResourceNotFoundException":
                    cursor.iterator = None
                    self._shards.forget(stream)
                    return
                raise BusError(f"kinesis GetRecords on {stream}/{shard.shard_id} failed: {code}") from None
            next_iterator = answer.get("NextShardIterator")
            behind = answer.get("MillisBehindLatest")
            if isinstance(behind, int) and not isinstance(behind, bool):
                self._progress.behind(key, behind)
            cursor.iterator = next_iterator
            raw_records = answer.get("Records") or ()
            for raw in raw_records:
                sequence = raw["SequenceNumber"]
                cursor.pending.append(BusRecord(topic, shard.partition, sequence, KINESIS_SEQUENCE, bytes(raw["Data"])))
            if raw_records:
                self._progress.seen(key, int(raw_records[-1]["SequenceNumber"]))
                return
            if next_iterator is None:
                cursor.exhausted = True  # a closed shard read to its end (AWS, kinesalite)
                return
            if not behind:
                cursor.empty_at_tip += 1
                last = cursor.position
                if shard.closed and (
                    (last is not None and int(last) >= int(shard.ending_sequence or 0)) or cursor.empty_at_tip >= 2
                ):
                    cursor.exhausted = True  # moto: closed shards never return a null iterator
                return
            # Empty but behind the tip: a sparse stretch; keep following within this read.

    async def _iterator(self, topic: str, stream: str, shard: ShardInfo, position: str | None) -> str:
        """A shard iterator continuing after ``position`` (see the module docstring)."""
        client_errors = await self._calls.client_errors()
        if position is None:
            kind = "TRIM_HORIZON" if self._start_position == "trim_horizon" or shard.parents else "LATEST"
            args: dict[str, Any] = {"ShardIteratorType": kind}
        else:
            args = {"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "StartingSequenceNumber": position}
        try:
            answer = await self._calls.call("get_shard_iterator", what=f"{stream}/{shard.shard_id}",
                                            StreamName=stream, ShardId=shard.shard_id, **args)
        except client_errors as exc:
            code = error_code(exc)
            if position is not None and (code == "InvalidArgumentException" or (http_status(exc) or 0) >= 500):
                # The sequence number is stale for this shard (expired data, re-created stream).
                log.warning("stale sequence number; falling back to TRIM_HORIZON", topic=topic,
                            partition=shard.partition, position=position, code=code)
                answer = await self._calls.call("get_shard_iterator", what=f"{stream}/{shard.shard_id}",
                                                StreamName=stream, ShardId=shard.shard_id,
                                                ShardIteratorType="TRIM_HORIZON")
            else:
                raise BusError(f"kinesis GetShardIterator on {stream}/{shard.shard_id} failed: {code}") from None
        return str(answer["ShardIterator"])

    async def _pace(self, key: ShardKey) -> None:
        """Space GetRecords calls on one shard ``1 / reads_per_second`` apart."""
        now = anyio.current_time()
        at = self._next_read_at.get(key, now)
        if at > now:
            await anyio.sleep(at - now)
            # The clock after waking, not the scheduled time: a late wake-up must not shorten the
            # gap to the next call below the limit.
            now = anyio.current_time()
        self._next_read_at[key] = now + self._read_interval_s

    async def backlog(self, topic: str, stream: str, partition: int, position: str | None) -> Backlog:
        """One GetShardIterator + GetRecords(Limit=1) after ``position``: whether a record follows,
        and ``MillisBehindLatest``. Kinesis has no call answering the newest sequence number, so
        ``end`` and ``lag`` (a count) are unknown, except for a drained closed shard (nothing left).
        Costs one of the shard's 5 reads per second; the shard's cursor is left alone."""
        shard = await self._shards.lookup(stream, partition)
        if shard is None:
            return Backlog(end=None, lag=None)
        if is_drained(shard, position):
            return Backlog(end=shard.ending_sequence, lag=0, behind_ms=0, unread=False)
        client_errors = await self._calls.client_errors()
        iterator = await self._iterator(topic, stream, shard, position)
        await self._pace((stream, partition))
        try:
            answer = await self._calls.call("get_records", what=f"{stream}/{shard.shard_id}",
                                            ShardIterator=iterator, Limit=1)
        except client_errors as exc:
            raise BusError(f"kinesis GetRecords on {stream}/{shard.shard_id} failed: {error_code(exc)}") from None
        behind = answer.get("MillisBehindLatest")
        behind = behind if isinstance(behind, int) and not isinstance(behind, bool) else None
        # An empty answer behind the tip is a sparse stretch, not the end: records follow.
        unread = bool(answer.get("Records")) or bool(behind)
        return Backlog(end=None, lag=None, behind_ms=behind, unread=unread)
