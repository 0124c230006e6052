"""A message channel between two processes: newline-delimited JSON objects over a socket pair.

Used between a parent and the child processes it supervises (the query actor and its workers). The
end of the stream is the signal both sides rely on: a child whose parent died (even by ``kill -9``)
reads EOF at once and exits, so no child outlives its parent.
"""

from __future__ import annotations

import socket
from typing import Any

import anyio
import orjson
from anyio.abc import SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream

__all__ = ("Channel", "channel_pair")

# A commit announcement names every flow and frame it touched (up to a group commit's worth).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def channel_pair() -> tuple[socket.socket, socket.socket]:
    """Two connected stream sockets: keep one, pass the other to a child (``pass_fds``)."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)


class Channel:
    """One end of a socket pair, speaking whole JSON objects; sends are serialised by a lock."""

    def __init__(self, stream: SocketStream) -> None:
        self._stream = stream
        self._reader = BufferedByteReceiveStream(stream)
        self._send_lock = anyio.Lock()

    @classmethod
    async def from_socket(cls, sock: socket.socket) -> Channel:
        sock.setblocking(False)
        return cls(await SocketStream.from_socket(sock))

    async def send(self, message: dict[str, Any]) -> None:
        await self.send_encoded(orjson.dumps(message))

    async def send_encoded(self, data: bytes) -> None:
        """Send a message already encoded with :func:`encode` (to fan one message out to many)."""
        async with self._send_lock:
            await self._stream.send(data + b"\n")

    async def receive(self) -> dict[str, Any]:
        """The next message. Raises ``anyio.EndOfStream`` when the other side has gone."""
        try:
            line = await self._reader.receive_until(b"\n", MAX_MESSAGE_BYTES)
        except anyio.IncompleteRead:
            raise anyio.EndOfStream from None
        message = orjson.loads(line)
        if not isinstance(message, dict):
            raise ValueError(f"channel message is not an object: {line[:80]!r}")
        return message

    async def aclose(self) -> None:
        await self._stream.aclose()


def encode(message: dict[str, Any]) -> bytes:
    return orjson.dumps(message)
