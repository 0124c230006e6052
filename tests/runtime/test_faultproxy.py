"""The fault proxy against a plain TCP echo server: pass, cut, blackhole, restore."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest
from anyio.abc import SocketStream

from ctxplane.actors.drills.faultproxy import FaultProxy, Mode


async def _echo(stream: SocketStream) -> None:
    async with stream:
        try:
            async for data in stream:
                await stream.send(data)
        except (anyio.BrokenResourceError, anyio.EndOfStream):
            pass


@asynccontextmanager
async def _proxied() -> AsyncIterator[tuple[FaultProxy, int]]:
    async with anyio.create_task_group() as tg:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        tg.start_soon(listener.serve, _echo)
        upstream = listener.extra(anyio.abc.SocketAttribute.local_port)
        proxy = FaultProxy("127.0.0.1", upstream)
        port = await tg.start(proxy.serve)
        try:
            yield proxy, port
        finally:
            tg.cancel_scope.cancel()


async def _round_trip(stream: SocketStream, data: bytes) -> bytes:
    await stream.send(data)
    received = b""
    while len(received) < len(data):
        received += await stream.receive()
    return received


async def test_pass_forwards_both_ways() -> None:
    async with _proxied() as (proxy, port), await anyio.connect_tcp("127.0.0.1", port) as stream:
        assert await _round_trip(stream, b"hello") == b"hello"
        assert proxy.statistics().connections == 1 and proxy.statistics().bytes_up == 5


async def test_cut_resets_live_connections_and_refuses_new_ones_until_restored() -> None:
    async with _proxied() as (proxy, port):
        live = await anyio.connect_tcp("127.0.0.1", port)
        assert await _round_trip(live, b"x") == b"x"
        proxy.cut()
        with pytest.raises((anyio.BrokenResourceError, anyio.EndOfStream, ConnectionError)):
            with anyio.fail_after(5):
                await live.send(b"y")
                await live.receive()
        await live.aclose()
        refused = await anyio.connect_tcp("127.0.0.1", port)  # accepted, then reset at once
        with pytest.raises((anyio.BrokenResourceError, anyio.EndOfStream, ConnectionError)):
            with anyio.fail_after(5):
                await refused.receive()
        await refused.aclose()
        proxy.restore()
        async with await anyio.connect_tcp("127.0.0.1", port) as again:
            assert await _round_trip(again, b"back") == b"back"
        assert proxy.statistics().reset >= 2


async def test_blackhole_holds_bytes_until_restore() -> None:
    async with _proxied() as (proxy, port), await anyio.connect_tcp("127.0.0.1", port) as stream:
        assert await _round_trip(stream, b"a") == b"a"
        proxy.blackhole()
        assert proxy.mode is Mode.BLACKHOLE
        await stream.send(b"held")
        with anyio.move_on_after(0.3) as silence:
            await stream.receive()
        assert silence.cancelled_caught  # nothing comes back while blackholed
        proxy.restore()
        received = b""
        with anyio.fail_after(5):
            while len(received) < 4:
                received += await stream.receive()
        assert received == b"held"  # held by TCP, not dropped: the connection carries on intact
