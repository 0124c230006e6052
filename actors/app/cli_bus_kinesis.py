"""``ctxplane bus publish|create`` against a Kinesis bus (``--config`` naming ``bus.kind: kinesis``).

Called by ``actors/app/cli_bus.py``; same contract: a user mistake raises
:class:`~runtime.exceptions.UsageError` (exit 2) with one line, a runtime failure (emulator or AWS
unreachable, throttled past every retry) raises :class:`~runtime.exceptions.CtxplaneError` (exit 1).
Credentials never appear in a message.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import anyio

from ctxplane.runtime.bus import BusUnavailable, KinesisBus, kinesis_bus_from_settings
from ctxplane.runtime.exceptions import BusError, CtxplaneError, UsageError

__all__ = ("create_on_kinesis", "publish_to_kinesis")

T = TypeVar("T")


def _run(bus_settings: Any, body: Callable[[KinesisBus], Awaitable[T]]) -> T:
    # stdout carries the command's one result line; the adapter's warnings (backoff) go to stderr.
    from ctxplane.config.settings import LoggingSettings
    from ctxplane.runtime.logs import configure_logging

    configure_logging(LoggingSettings(level="warning"), stream=sys.stderr)

    async def main() -> T:
        async with kinesis_bus_from_settings(bus_settings) as bus:
            return await body(bus)

    try:
        return anyio.run(main)
    except BusUnavailable as exc:
        raise CtxplaneError(str(exc)) from None
    except BusError as exc:
        raise UsageError(str(exc)) from None


async def _open_shards(bus: KinesisBus, topic: str) -> int:
    return sum(1 for shard in (await bus.shards(topic)).values() if not shard.closed)


def publish_to_kinesis(
    bus_settings: Any, topic: str, items: Sequence[tuple[str, Mapping[str, Any]]], partitions: int | None
) -> str:
    """Publish ``items`` with PutRecords (creating the stream with ``partitions`` shards, default
    1, when it does not exist); returns the line to print.

    Raises:
        UsageError: the stream exists with another open-shard count than ``--partitions``.
    """

    async def body(bus: KinesisBus) -> str:
        stream = bus.stream_of(topic)
        existing = await _open_shards(bus, topic)
        if existing and partitions is not None and existing != partitions:
            raise UsageError(
                f"stream {stream} already has {existing} open shards; --partitions {partitions} does not match"
            )
        if not existing:
            await bus.create_topic(topic, partitions or 1)
        await bus.publish_many(topic, items)
        return f"published {len(items)} records to {topic} (stream {stream}, {await _open_shards(bus, topic)} shards)"

    return _run(bus_settings, body)


def create_on_kinesis(bus_settings: Any, topic: str, partitions: int) -> str:
    """CreateStream with ``partitions`` shards and wait until ACTIVE; returns the line to print."""

    async def body(bus: KinesisBus) -> str:
        stream = bus.stream_of(topic)
        existed = bool(await bus.shards(topic))
        await bus.create_topic(topic, partitions)
        state = "already exists with" if existed else "created with"
        return f"topic {topic} {state} {partitions} shards (stream {stream})"

    return _run(bus_settings, body)
