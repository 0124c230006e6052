"""The Kinesis bus: topics are streams, shards are partitions, positions are sequence numbers.

Mapping (origin-behaviour.md §4.2, architecture.md §Event bus adapters)
-----------------------------------------------------------------------
- A topic reads from the stream ``bus.streams[topic]``, or from the stream named as the topic when
  the mapping has no entry (or maps it to ``auto``, ``topic`` or an empty string, as the origin did).
- A partition is a shard; its number is the integer suffix of the shard id
  (``shardId-000000000003`` → 3). Closed shards (split or merged parents) are listed too: a
  consumer must finish them before their children (see *Resharding*).
- A record's offset is its ``SequenceNumber`` (a decimal string, offset kind ``kinesis_sequence``);
  its ``raw`` is the record's ``Data`` bytes exactly (the origin publishes the bare envelope JSON).
- A position is the **last sequence number processed** of the shard, so it is exclusive-next: a
  reader resumes with ``AFTER_SEQUENCE_NUMBER``. ``None`` (no checkpoint) starts at
  ``TRIM_HORIZON`` or ``LATEST`` per ``start_position`` — except that a child shard always starts
  at ``TRIM_HORIZON``, because its first records continue its parents' keys. While nothing has been
  read yet, :meth:`KinesisBus.read` keeps returning ``next_position=None``: there is no sequence
  number to name, and that keeps the partition actor from committing an empty checkpoint.
  Positions are compared numerically (:meth:`compare_positions`), never as strings.

Reading
-------
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
shard). Reads of one shard are spaced ``1 / reads_per_second`` apart; throttling errors
(``ProvisionedThroughputExceededException`` and friends) and transient transport errors back off
exponentially with full jitter, and after ``_MAX_ATTEMPTS`` the call raises :class:`BusUnavailable`
(the partition actor then restarts under its supervisor's backoff). The policy is the kernel's
(``runtime/kernel/restarts.py``: a :class:`Retry` per call); botocore's own retries are off, so no
retry runs inside another: a PutRecords whose records are partly refused spends the same attempts
on re-sending them as on the call's own failures. botocore's ``read_timeout`` bounds every call (kinesalite can hang
forever on ``AT_TIMESTAMP``).

Resharding
----------
A split or merge closes the parent shard(s) (``EndingSequenceNumber`` set) and opens children
(``ParentShardId`` / ``AdjacentParentShardId``). Parent-before-child ordering is the caller's
policy (``actors/ingest/leases.py``: a child's partition actor starts only once every parent's *committed
checkpoint* is drained); this adapter supplies the facts: :meth:`KinesisBus.shards` (the lineage)
and the *drained position*. When a read finds a closed shard exhausted, it returns
``next_position = max(position, EndingSequenceNumber)``, so the committed checkpoint of a drained
parent is ``>= EndingSequenceNumber`` — a durable "drained" mark any process can check
(:func:`is_drained`). Exhausted means: ``NextShardIterator`` is null (AWS, kinesalite), or the
position reached ``EndingSequenceNumber`` (moto, whose closed shards always return an iterator
and whose ``EndingSequenceNumber`` is the last record's), or two consecutive empty answers at the
tip (``MillisBehindLatest == 0``) on a closed shard.

End position: Kinesis has no cheap "last sequence number" call, and polling one would spend the
shard's read budget. :meth:`end_position` therefore reports the newest sequence number this
adapter has seen on the shard (read or published), ``EndingSequenceNumber`` for a drained closed
shard, or ``"0"`` when it knows nothing; :meth:`lag` is ``None`` (sequence numbers are not counts).

Credentials and endpoint come from the configuration and the environment (the standard AWS chain);
they are never logged — log lines name the endpoint as scheme://host:port only. With a loopback
``endpoint_url`` (an emulator) and no credentials in the environment, fixed dummy credentials are
used, so botocore never probes the EC2 metadata address outside the machine.
"""

from __future__ import annotations

import os
import random
import re
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from hashlib import sha256
from typing import Any, Final
from urllib.parse import urlsplit

import anyio
import orjson
import structlog

from ctxplane.runtime.bus.base import (
    START_POSITIONS,
    Backlog,
    BusRecord,
    BusRef,
    EventBus,
    ReadResult,
)
from ctxplane.runtime.exceptions import (
    BusClosed,
    BusError,
    BusPositionError,
    UsageError,
)
from ctxplane.runtime.kernel.restarts import Backoff, Retry

__all__ = (
    "KINESIS_SEQUENCE",
    "BusUnavailable",
    "KinesisBus",
    "ShardInfo",
    "is_drained",
    "kinesis_bus_from_settings",
    "partition_of_shard",
)

log = structlog.get_logger("ctxplane.bus.kinesis")

#: The offset kind of the Kinesis bus.
KINESIS_SEQUENCE: Final = "kinesis_sequence"

# Kinesis' documented per-shard read ceiling (GetRecords calls per second, all consumers together).
_READS_PER_SECOND: Final = 5.0
# GetRecords returns at most 10,000 records per call.
_GET_RECORDS_LIMIT: Final = 10_000
# Iterators expire after 5 minutes; refresh a little earlier rather than pay for a failed call.
_ITERATOR_TTL_S: Final = 280.0
# Attempts per call for throttling / transient errors; with the backoff below that is ~20 s of
# trying before a read gives up and lets the partition actor's supervisor take over.
_MAX_ATTEMPTS: Final = 8
# Full jitter under a cap doubling from 0.1 s to 5 s: spreads the retries of every shard throttled
# at the same moment.
_RETRY: Final = Backoff(initial=0.1, maximum=5.0, full_jitter=True)
# Empty answers while MillisBehindLatest > 0 (a sparse stretch of the shard) are followed within
# one read, up to this many calls, so a read never reports "nothing new" while records are ahead.
_EMPTY_FOLLOW: Final = 3
# PutRecords limits: 500 records and 5 MiB per call; 1 MiB per record; partition keys 1-256 chars.
_PUT_MAX_RECORDS: Final = 500
_PUT_MAX_BYTES: Final = 5 * 1024 * 1024
_RECORD_MAX_BYTES: Final = 1024 * 1024
_KEY_MAX_CHARS: Final = 256
# A MillisBehindLatest older than this (no GetRecords on the shard since) is no longer reported.
_BEHIND_TTL_S: Final = 60.0
# An unknown shard (deleted stream, not yet listed) is re-listed at most this often.
_RELIST_S: Final = 1.0
# Creating a stream takes ~30 s on AWS, none on emulators; give up after this.
_CREATE_TIMEOUT_S: Final = 120.0

_THROTTLED: Final = frozenset({
    "ProvisionedThroughputExceededException", "ThrottlingException", "LimitExceededException",
    "KMSThrottlingException", "RequestLimitExceeded",
})
_TRANSIENT_CODES: Final = frozenset({"InternalFailure", "InternalServerError", "ServiceUnavailable", "500", "503"})
_STREAM_NAME: Final = re.compile(r"^[a-zA-Z0-9_.-]{1,128}$")
_SHARD_SUFFIX: Final = re.compile(r"(\d+)$")
_DIGITS: Final = re.compile(r"^[0-9]{1,128}$")
_AUTO_NAMES: Final = frozenset({"", "auto", "topic"})


class BusUnavailable(BusError):
    """The bus did not answer usefully after every retry (throttled, unreachable, 5xx). Unlike a
    plain :class:`BusError`, a later retry may succeed."""


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


def _parse_position(position: str) -> int:
    if not isinstance(position, str) or not _DIGITS.match(position):
        raise BusPositionError(
            f"invalid kinesis_sequence position {position!r}: expected a decimal sequence number"
        )
    return int(position)


def _is_loopback(endpoint_url: str | None) -> bool:
    if not endpoint_url:
        return False
    host = urlsplit(endpoint_url).hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


def _safe_endpoint(endpoint_url: str | None) -> str:
    """scheme://host:port only: never user info, path or query (which could carry secrets)."""
    if not endpoint_url:
        return "aws"
    parts = urlsplit(endpoint_url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}"


def _error_code(exc: BaseException) -> str | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        return str(code) if code is not None else None
    return None


def _http_status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return int(status) if status is not None else None
    return None


_Errors = tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...], tuple[type[BaseException], ...]]


def _botocore_errors() -> _Errors:
    """(client errors, transport errors, credential errors) of botocore, resolved once (the
    import is lazy: the file bus never pays for botocore)."""
    from botocore import exceptions as bex

    transport: tuple[type[BaseException], ...] = (
        bex.EndpointConnectionError, bex.ConnectionClosedError, bex.ReadTimeoutError,
        bex.ConnectTimeoutError, bex.HTTPClientError, OSError, TimeoutError,
    )
    credentials = (bex.NoCredentialsError, bex.PartialCredentialsError, bex.NoRegionError)
    return (bex.ClientError,), transport, credentials


class _Transient(Exception):
    """Internal: one attempt at a call failed in a way another attempt may not (see ``_attempt``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(slots=True)
class _Cursor:
    """Where one shard's cached iterator stands (see the module docstring)."""

    position: str | None
    iterator: str | None = None
    fetched_at: float = 0.0
    pending: deque[BusRecord] = field(default_factory=deque)
    empty_at_tip: int = 0
    exhausted: bool = False


ClientFactory = Callable[[], Any]  # returns an async context manager yielding a kinesis client


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

    One client serves every call (aiobotocore clients are safe for concurrent use by tasks of one
    event loop); it is created lazily in the caller's event loop and closed by :meth:`aclose`.
    """

    offset_kind = KINESIS_SEQUENCE

    def __init__(
        self,
        *,
        streams: Mapping[str, str] | None = None,
        start_position: str = "trim_horizon",
        endpoint_url: str | None = None,
        region: str | None = None,
        reads_per_second: float = _READS_PER_SECOND,
        client_factory: ClientFactory | None = None,
        read_timeout_s: float = 10.0,
        connect_timeout_s: float = 5.0,
    ) -> None:
        if start_position not in START_POSITIONS:
            raise ValueError(f"start_position must be one of {START_POSITIONS}, got {start_position!r}")
        if not reads_per_second > 0:
            raise ValueError(f"reads_per_second must be > 0, got {reads_per_second!r}")
        self._streams = dict(streams or {})
        self._start_position = start_position
        self._endpoint_url = endpoint_url
        self._region = region
        self._read_interval_s = 1.0 / reads_per_second
        self._client_factory = client_factory
        self._read_timeout_s = read_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._stack: AsyncExitStack | None = None
        self._client: Any = None
        self._client_lock = anyio.Lock()
        self._closed = False
        self._shards: dict[str, dict[int, ShardInfo]] = {}  # stream -> partition -> info
        self._cursors: dict[tuple[str, int], _Cursor] = {}
        self._shard_locks: dict[tuple[str, int], anyio.Lock] = {}
        self._next_read_at: dict[tuple[str, int], float] = {}
        self._last_seen: dict[tuple[str, int], int] = {}
        self._behind: dict[tuple[str, int], tuple[int, float]] = {}  # MillisBehindLatest, monotonic time
        self._known_streams: set[str] = set()
        self._listed_at: dict[str, float] = {}
        self._rng = random.Random()
        self._errors: _Errors | None = None

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

    # -- client ---------------------------------------------------------------------------------

    async def _get_client(self) -> Any:
        if self._closed:
            raise BusClosed("the Kinesis bus is closed")
        if self._client is not None:
            return self._client
        async with self._client_lock:
            if self._client is None:
                stack = AsyncExitStack()
                factory = self._client_factory or self._default_client
                self._client = await stack.enter_async_context(factory())
                self._stack = stack
                self._errors = _botocore_errors()
                log.info("kinesis client ready", endpoint=_safe_endpoint(self._endpoint_url), region=self._region)
        return self._client

    def _default_client(self) -> Any:
        import aioboto3
        from aiobotocore.config import AioConfig

        kwargs: dict[str, Any] = {}
        if _is_loopback(self._endpoint_url) and not (
            os.environ.get("AWS_ACCESS_KEY_ID") or os.environ.get("AWS_PROFILE")
        ):
            # An emulator accepts any credentials; without some, botocore would try the EC2
            # metadata service (169.254.169.254), an address outside this machine.
            kwargs = {"aws_access_key_id": "ctxplane-local", "aws_secret_access_key": "ctxplane-local"}
        config = AioConfig(
            connect_timeout=self._connect_timeout_s,
            read_timeout=self._read_timeout_s,
            # One retry policy (ours, below), not two stacked ones.
            retries={"total_max_attempts": 1, "mode": "standard"},
            max_pool_connections=64,
        )
        session = aioboto3.Session()
        return session.client(
            "kinesis", endpoint_url=self._endpoint_url, region_name=self._region, config=config, **kwargs
        )

    async def _client_errors(self) -> tuple[type[BaseException], ...]:
        """botocore's ClientError (as a tuple for ``except``), once the client exists."""
        await self._get_client()
        assert self._errors is not None
        return self._errors[0]

    async def aclose(self) -> None:
        self._closed = True
        stack, self._stack = self._stack, None
        self._client = None
        if stack is not None:
            with anyio.CancelScope(shield=True):
                await stack.aclose()

    # -- calls with retries ------------------------------------------------------------------------

    async def _call(self, operation: str, *, what: str, **kwargs: Any) -> Any:
        """Call ``client.<operation>(**kwargs)``, retrying throttling and transient failures with
        exponential backoff and full jitter.

        Raises:
            BusUnavailable: still failing after ``_MAX_ATTEMPTS``.
            botocore ClientError: any other service error (the caller classifies it).
        """
        client = await self._get_client()
        retry = self._retry()
        while True:
            try:
                return await self._attempt(client, operation, **kwargs)
            except _Transient as failure:
                await self._back_off(retry, operation, what, failure.reason)

    async def _attempt(self, client: Any, operation: str, **kwargs: Any) -> Any:
        """One call of ``client.<operation>(**kwargs)``.

        Raises:
            _Transient: throttled, a server error (not for GetRecords, whose 5xx the caller
                handles: moto answers a bad iterator so), or the endpoint unreachable.
            BusError: no credentials or region (the message names what is missing, never a value).
            botocore ClientError: any other service error.
        """
        assert self._errors is not None
        client_errors, transport_errors, credential_errors = self._errors
        try:
            return await getattr(client, operation)(**kwargs)
        except credential_errors as exc:
            raise BusError(f"kinesis {operation}: {exc} (set AWS credentials / region, or bus.region)") from None
        except client_errors as exc:
            code = _error_code(exc)
            if code in _THROTTLED:
                raise _Transient(f"throttled ({code})") from None
            if (code in _TRANSIENT_CODES or (_http_status(exc) or 0) >= 500) and operation != "get_records":
                raise _Transient(f"server error ({code})") from None
            raise
        except transport_errors as exc:
            raise _Transient(f"unreachable ({type(exc).__name__})") from None

    def _retry(self) -> Retry:
        return Retry(_RETRY, attempts=_MAX_ATTEMPTS, rng=self._rng)

    async def _back_off(self, retry: Retry, operation: str, what: str, reason: str) -> None:
        """After a failed attempt: wait the backoff, or raise when it was the last.

        Raises:
            BusUnavailable: ``retry`` is exhausted.
        """
        pause = retry.failed()
        if retry.exhausted:
            raise BusUnavailable(f"kinesis {operation} for {what} failed {retry.failures} times: {reason}")
        log.warning("kinesis call backing off", operation=operation, target=what, reason=reason,
                    attempt=retry.failures, retry_in_s=round(pause, 3))
        await anyio.sleep(pause)

    # -- shards ---------------------------------------------------------------------------------

    async def shards(self, topic: str) -> dict[int, ShardInfo]:
        """List every shard of the topic's stream, closed ones included (one paginated ListShards,
        through botocore's paginator — moto rejects a bare NextToken). ``{}`` if the stream does
        not exist. Refreshes the cached lineage that reads use."""
        stream = self.stream_of(topic)
        client = await self._get_client()
        assert self._errors is not None
        client_errors, transport_errors, credential_errors = self._errors
        found: dict[int, ShardInfo] = {}
        retry = self._retry()
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
                code = _error_code(exc)
                if code == "ResourceNotFoundException":
                    self._shards.pop(stream, None)
                    self._known_streams.discard(stream)
                    return {}
                if code not in _THROTTLED and (_http_status(exc) or 0) < 500:
                    raise BusError(f"kinesis ListShards for stream {stream} failed: {code}") from None
                reason = f"error {code}"
            except transport_errors as exc:
                reason = f"unreachable ({type(exc).__name__})"
            await self._back_off(retry, "ListShards", f"stream {stream}", reason)
        self._shards[stream] = found
        self._known_streams.add(stream)
        return dict(found)

    async def list_partitions(self, topic: str) -> list[int]:
        """See :meth:`EventBus.list_partitions`: every shard, open or closed, ascending."""
        return sorted(await self.shards(topic))

    async def _shard(self, stream: str, topic: str, partition: int) -> ShardInfo | None:
        """The cached shard info; an unknown shard is re-listed at most once per second (a reader
        polling a deleted stream must not turn every poll into a ListShards call)."""
        cached = self._shards.get(stream)
        if cached is None or partition not in cached:
            now = anyio.current_time()
            if now - self._listed_at.get(stream, -_RELIST_S) >= _RELIST_S:
                self._listed_at[stream] = now
                cached = await self.shards(topic)
        return (cached or {}).get(partition)

    # -- reading --------------------------------------------------------------------------------

    async def read(
        self,
        topic: str,
        partition: int,
        position: str | None,
        max_records: int,
        max_bytes: int,
    ) -> ReadResult:
        """See :meth:`EventBus.read` and the module docstring (cursor, rate limit, drained
        position). An unknown shard reads as empty. While nothing was ever read from a shard with
        no checkpoint, ``next_position`` stays ``None``."""
        if self._closed:
            raise BusClosed("the Kinesis bus is closed")
        if max_records < 1 or max_bytes < 1:
            raise ValueError(f"max_records and max_bytes must be >= 1, got {max_records} and {max_bytes}")
        if position is not None:
            _parse_position(position)
        stream = self.stream_of(topic)
        key = (stream, partition)
        lock = self._shard_locks.setdefault(key, anyio.Lock())
        async with lock:  # one reader per shard at a time: the cursor is not shared state to race on
            shard = await self._shard(stream, topic, partition)
            if shard is None:
                return ReadResult([], position)  # type: ignore[arg-type]
            if is_drained(shard, position):
                return ReadResult([], position)  # type: ignore[arg-type]
            cursor = self._cursors.get(key)
            if cursor is None or cursor.position != position:
                cursor = self._cursors[key] = _Cursor(position)
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
                shard = await self._refreshed_closed(stream, topic, shard)
                if shard.ending_sequence is not None:
                    ending = shard.ending_sequence
                    drained = ending if position is None or int(ending) > int(position) else position
                    cursor.position = drained
                    self._seen(key, int(ending))
                    log.info("closed shard drained", topic=topic, partition=partition, stream=stream,
                             ending_sequence=ending)
                    return ReadResult([], drained)
                cursor.exhausted = False  # listed open after all: keep reading
            return ReadResult([], position)  # type: ignore[arg-type]

    async def _refreshed_closed(self, stream: str, topic: str, shard: ShardInfo) -> ShardInfo:
        """The shard's info, re-listed if the cache still shows it open (a null NextShardIterator
        proves it closed, and its EndingSequenceNumber is then needed)."""
        if shard.closed:
            return shard
        return (await self.shards(topic)).get(shard.partition, shard)

    async def _fetch(self, topic: str, stream: str, shard: ShardInfo, cursor: _Cursor, max_records: int) -> None:
        """Fill ``cursor.pending`` with the next GetRecords answer(s), or mark it exhausted."""
        key = (stream, shard.partition)
        client_errors = await self._client_errors()
        refetches = 0
        for _ in range(_EMPTY_FOLLOW):
            if cursor.iterator is None or time.monotonic() - cursor.fetched_at > _ITERATOR_TTL_S:
                cursor.iterator = await self._iterator(topic, stream, shard, cursor.position)
                cursor.fetched_at = time.monotonic()
            await self._pace(key)
            try:
                answer = await self._call(
                    "get_records", what=f"{stream}/{shard.shard_id}",
                    ShardIterator=cursor.iterator, Limit=min(max(max_records, 1), _GET_RECORDS_LIMIT),
                )
            except client_errors as exc:
                code = _error_code(exc)
                status = _http_status(exc) or 0
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
                    self._shards.pop(stream, None)
                    return
                raise BusError(f"kinesis GetRecords on {stream}/{shard.shard_id} failed: {code}") from None
            next_iterator = answer.get("NextShardIterator")
            behind = answer.get("MillisBehindLatest")
            if isinstance(behind, int) and not isinstance(behind, bool):
                self._behind[key] = (behind, time.monotonic())
            cursor.iterator = next_iterator
            raw_records = answer.get("Records") or ()
            for raw in raw_records:
                sequence = raw["SequenceNumber"]
                cursor.pending.append(BusRecord(topic, shard.partition, sequence, KINESIS_SEQUENCE, bytes(raw["Data"])))
            if raw_records:
                self._seen(key, int(raw_records[-1]["SequenceNumber"]))
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
        client_errors = await self._client_errors()
        if position is None:
            kind = "TRIM_HORIZON" if self._start_position == "trim_horizon" or shard.parents else "LATEST"
            args: dict[str, Any] = {"ShardIteratorType": kind}
        else:
            args = {"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "StartingSequenceNumber": position}
        try:
            answer = await self._call("get_shard_iterator", what=f"{stream}/{shard.shard_id}",
                                      StreamName=stream, ShardId=shard.shard_id, **args)
        except client_errors as exc:
            code = _error_code(exc)
            if position is not None and (code == "InvalidArgumentException" or (_http_status(exc) or 0) >= 500):
                # The sequence number is stale for this shard (expired data, re-created stream).
                log.warning("stale sequence number; falling back to TRIM_HORIZON", topic=topic,
                            partition=shard.partition, position=position, code=code)
                answer = await self._call("get_shard_iterator", what=f"{stream}/{shard.shard_id}",
                                          StreamName=stream, ShardId=shard.shard_id, ShardIteratorType="TRIM_HORIZON")
            else:
                raise BusError(f"kinesis GetShardIterator on {stream}/{shard.shard_id} failed: {code}") from None
        return str(answer["ShardIterator"])

    async def _pace(self, key: tuple[str, int]) -> None:
        """Space GetRecords calls on one shard ``1 / reads_per_second`` apart."""
        now = anyio.current_time()
        at = self._next_read_at.get(key, now)
        if at > now:
            await anyio.sleep(at - now)
            # The clock after waking, not the scheduled time: a late wake-up must not shorten the
            # gap to the next call below the limit.
            now = anyio.current_time()
        self._next_read_at[key] = now + self._read_interval_s

    def _seen(self, key: tuple[str, int], sequence: int) -> None:
        if sequence > self._last_seen.get(key, -1):
            self._last_seen[key] = sequence

    async def end_position(self, topic: str, partition: int) -> str:
        """The newest sequence number seen on the shard by this adapter (no API call; see the
        module docstring), or ``"0"`` when none was seen."""
        if self._closed:
            raise BusClosed("the Kinesis bus is closed")
        return str(self._last_seen.get((self.stream_of(topic), partition), 0))

    async def backlog(self, topic: str, partition: int, position: str | None) -> Backlog:
        """One GetShardIterator + GetRecords(Limit=1) after ``position``: whether a record follows,
        and ``MillisBehindLatest``. Kinesis has no call answering the newest sequence number, so
        ``end`` and ``lag`` (a count) are unknown, except for a drained closed shard (nothing left).
        Costs one of the shard's 5 reads per second; the reader's cursor is left alone."""
        if self._closed:
            raise BusClosed("the Kinesis bus is closed")
        stream = self.stream_of(topic)
        shard = await self._shard(stream, topic, partition)
        if shard is None:
            return Backlog(end=None, lag=None)
        if is_drained(shard, position):
            return Backlog(end=shard.ending_sequence, lag=0, behind_ms=0, unread=False)
        client_errors = await self._client_errors()
        iterator = await self._iterator(topic, stream, shard, position)
        await self._pace((stream, partition))
        try:
            answer = await self._call("get_records", what=f"{stream}/{shard.shard_id}", ShardIterator=iterator, Limit=1)
        except client_errors as exc:
            raise BusError(f"kinesis GetRecords on {stream}/{shard.shard_id} failed: {_error_code(exc)}") from None
        behind = answer.get("MillisBehindLatest")
        behind = behind if isinstance(behind, int) and not isinstance(behind, bool) else None
        # An empty answer behind the tip is a sparse stretch, not the end: records follow.
        unread = bool(answer.get("Records")) or bool(behind)
        return Backlog(end=None, lag=None, behind_ms=behind, unread=unread)

    def behind_latest_ms(self, topic: str, partition: int) -> int | None:
        """``MillisBehindLatest`` of the shard's last GetRecords answer (no API call), or ``None``
        when there was none in the last ``_BEHIND_TTL_S`` seconds."""
        try:
            value = self._behind.get((self.stream_of(topic), partition))
        except BusError:
            return None
        if value is None or time.monotonic() - value[1] > _BEHIND_TTL_S:
            return None
        return value[0]

    def compare_positions(self, a: str, b: str) -> int:
        left, right = _parse_position(a), _parse_position(b)
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
        """Publish with PutRecords, 500 records / 5 MiB per call; the stream is created (with
        ``partitions`` shards, default 1) if it does not exist. A record the service refuses for
        throughput is retried alone, so it lands after records of its shard sent later in the same
        call: PutRecords itself does not promise order across a partial failure. Data is the bare
        envelope JSON; keys longer than 256 characters are replaced by their SHA-256 hex.

        Raises:
            TypeError: an envelope is not JSON-serialisable (nothing is sent).
            BusError: a record over 1 MiB, a bad stream name, or records still refused after
                every retry.
        """
        if self._closed:
            raise BusClosed("the Kinesis bus is closed")
        stream = self.stream_of(topic)
        entries = []
        for partition_key, envelope in items:
            data = orjson.dumps(envelope)
            key = partition_key if len(partition_key) <= _KEY_MAX_CHARS else sha256(partition_key.encode()).hexdigest()
            if len(data) + len(key.encode()) > _RECORD_MAX_BYTES:
                raise BusError(f"a record of {len(data)} bytes exceeds Kinesis' 1 MiB record limit (topic {topic})")
            entries.append({"Data": data, "PartitionKey": key})
        if not entries:
            return []
        if stream not in self._known_streams:
            await self._ensure_stream(topic, stream, partitions or 1)
        refs: list[BusRef | None] = [None] * len(entries)
        for start, chunk in _chunks(entries):
            await self._put_chunk(topic, stream, chunk, start, refs)
        return [ref for ref in refs if ref is not None]

    async def _put_chunk(self, topic: str, stream: str, chunk: list[dict[str, Any]], start: int,
                         refs: list[BusRef | None]) -> None:
        # One budget of attempts for the chunk: a failed call and partly refused records both spend it.
        client = await self._get_client()
        retry = self._retry()
        todo = list(range(len(chunk)))
        while True:
            try:
                answer = await self._attempt(client, "put_records", StreamName=stream, Records=[chunk[i] for i in todo])
            except _Transient as failure:
                await self._back_off(retry, "put_records", stream, failure.reason)
                continue
            failed = []
            for index, result in zip(todo, answer["Records"], strict=True):
                if result.get("ErrorCode"):
                    failed.append(index)
                    continue
                partition = partition_of_shard(result["ShardId"])
                refs[start + index] = BusRef(topic, partition, result["SequenceNumber"], KINESIS_SEQUENCE)
                self._seen((stream, partition), int(result["SequenceNumber"]))
            if not failed:
                return
            todo = failed
            pause = retry.failed()
            if retry.exhausted:
                raise BusError(
                    f"kinesis PutRecords to {stream}: {len(todo)} records still refused after {retry.failures} attempts")
            await anyio.sleep(pause)

    async def _ensure_stream(self, topic: str, stream: str, partitions: int) -> None:
        if not await self.shards(topic):
            await self.create_topic(topic, partitions)

    async def create_topic(self, topic: str, partitions: int) -> None:
        """CreateStream with ``partitions`` shards, then wait until it is ACTIVE. Idempotent when
        the stream exists with that many *open* shards.

        Raises:
            ValueError: ``partitions < 1``.
            BusError: the stream exists with another open-shard count, or it never became ACTIVE.
        """
        if partitions < 1:
            raise ValueError(f"partitions must be >= 1, got {partitions}")
        stream = self.stream_of(topic)
        client_errors = await self._client_errors()
        try:
            await self._call("create_stream", what=stream, StreamName=stream, ShardCount=partitions)
        except client_errors as exc:
            if _error_code(exc) != "ResourceInUseException":
                raise BusError(f"kinesis CreateStream {stream} failed: {_error_code(exc)}") from None
            await self._wait_active(stream)
            open_shards = [s for s in (await self.shards(topic)).values() if not s.closed]
            if len(open_shards) != partitions:
                raise BusError(
                    f"stream {stream} already exists with {len(open_shards)} open shards, not {partitions}"
                ) from None
            return
        await self._wait_active(stream)
        await self.shards(topic)

    async def _wait_active(self, stream: str) -> None:
        delay = 0.05
        deadline = anyio.current_time() + _CREATE_TIMEOUT_S
        while True:
            answer = await self._call("describe_stream_summary", what=stream, StreamName=stream)
            status = answer["StreamDescriptionSummary"]["StreamStatus"]
            if status == "ACTIVE":
                return
            if anyio.current_time() > deadline:
                raise BusError(f"stream {stream} is still {status} after {_CREATE_TIMEOUT_S:.0f}s")
            await anyio.sleep(delay)
            delay = min(delay * 2, 1.0)


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


def _chunks(entries: list[dict[str, Any]]) -> list[tuple[int, list[dict[str, Any]]]]:
    """Split PutRecords entries into calls of at most 500 records and 5 MiB."""
    out: list[tuple[int, list[dict[str, Any]]]] = []
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


def kinesis_bus_from_settings(bus: Any) -> KinesisBus:
    """Build the adapter from a ``bus`` settings section (:class:`ctxplane.config.settings.BusSettings`).

    Raises:
        UsageError: no region is configured (``bus.region``, ``AWS_REGION``, ``AWS_DEFAULT_REGION``)
            and the endpoint is not a loopback emulator.
    """
    region = bus.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region is None:
        if not _is_loopback(bus.endpoint_url):
            raise UsageError("bus.region: not set, and neither AWS_REGION nor AWS_DEFAULT_REGION is")
        region = "us-east-1"  # emulators accept any region
    return KinesisBus(
        streams=bus.streams, start_position=bus.start_position, endpoint_url=bus.endpoint_url, region=region
    )
