"""Python clients for the query endpoint (async and sync), used by the CLI and the tests.

Example::

    with Client("unix:runs/ctxplane.sock") as client:
        answer = client.request({"op": "resolve_flow_binding", "pins": pins, "flow_id": "flow-7"})
"""

from __future__ import annotations

import socket
from types import TracebackType
from typing import Any, Self

import anyio
import orjson
from anyio.abc import ByteStream

from ctxplane.runtime.exceptions import CtxplaneError
from ctxplane.runtime.server import parse_listen

__all__ = ("AsyncClient", "Client", "QueryEndpointUnavailable")


class QueryEndpointUnavailable(CtxplaneError):
    """The query endpoint cannot be reached (no process running, or wrong ``query.listen``)."""


def _encode(request: dict[str, Any], auth: str | None) -> bytes:
    if auth is not None:
        request = {**request, "auth": auth}
    return orjson.dumps(request) + b"\n"


class AsyncClient:
    """One connection; requests may be pipelined with :meth:`request_many`."""

    def __init__(self, listen: str, *, auth_token: str | None = None, timeout_s: float = 10.0) -> None:
        self._listen = listen
        self._auth = auth_token
        self._timeout = timeout_s
        self._stream: ByteStream | None = None
        self._buffer = bytearray()
        self._lock = anyio.Lock()

    async def connect(self) -> Self:
        kind, host, port = parse_listen(self._listen)
        try:
            with anyio.fail_after(self._timeout):
                if kind == "unix":
                    self._stream = await anyio.connect_unix(host)
                else:
                    self._stream = await anyio.connect_tcp(host, port)
        except (OSError, TimeoutError) as exc:
            raise QueryEndpointUnavailable(f"cannot reach the query endpoint {self._listen}: {exc}") from None
        return self

    async def __aenter__(self) -> Self:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._stream is not None:
            await self._stream.aclose()
            self._stream = None

    async def send_raw(self, data: bytes) -> None:
        """Send bytes as they are (tests use this for malformed input)."""
        assert self._stream is not None, "connect() first"
        try:
            await self._stream.send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            raise QueryEndpointUnavailable("the query endpoint closed the connection") from exc

    async def receive(self) -> dict[str, Any]:
        """Read one response line."""
        assert self._stream is not None, "connect() first"
        with anyio.fail_after(self._timeout):
            while True:
                newline = self._buffer.find(b"\n")
                if newline >= 0:
                    line = bytes(self._buffer[:newline])
                    del self._buffer[: newline + 1]
                    return orjson.loads(line)  # type: ignore[no-any-return]
                try:
                    self._buffer += await self._stream.receive(65536)
                except (anyio.EndOfStream, anyio.BrokenResourceError) as exc:
                    raise QueryEndpointUnavailable("the query endpoint closed the connection") from exc

    async def request(self, request: dict[str, Any]) -> dict[str, Any]:
        async with self._lock:
            await self.send_raw(_encode(request, self._auth))
            return await self.receive()

    async def request_many(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Pipeline: send all, then read all answers (they come back in request order)."""
        async with self._lock:
            await self.send_raw(b"".join(_encode(r, self._auth) for r in requests))
            return [await self.receive() for _ in requests]


class Client:
    """Blocking client over a plain socket (no event loop needed)."""

    def __init__(self, listen: str, *, auth_token: str | None = None, timeout_s: float = 10.0) -> None:
        self._listen = listen
        self._auth = auth_token
        self._timeout = timeout_s
        self._sock: socket.socket | None = None
        self._buffer = bytearray()

    def connect(self) -> Self:
        kind, host, port = parse_listen(self._listen)
        try:
            if kind == "unix":
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(self._timeout)
                sock.connect(host)
            else:
                sock = socket.create_connection((host, port), timeout=self._timeout)
        except OSError as exc:
            raise QueryEndpointUnavailable(f"cannot reach the query endpoint {self._listen}: {exc.strerror or exc}") from None
        self._sock = sock
        return self

    def __enter__(self) -> Self:
        return self.connect()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def request(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self._sock is not None, "connect() first"
        self._send(_encode(request, self._auth))
        return self.receive_line()

    def request_many(self, requests: list[dict[str, Any]], *, window: int = 16) -> list[dict[str, Any]]:
        """Pipeline ``requests`` on this connection; answers in request order. At most ``window``
        are unanswered at a time, so neither side's buffers can fill up and stall the other."""
        answers: list[dict[str, Any]] = []
        for sent, request in enumerate(requests, start=1):
            self._send(_encode(request, self._auth))
            if sent - len(answers) >= window:
                answers.append(self.receive_line())
        while len(answers) < len(requests):
            answers.append(self.receive_line())
        return answers

    def _send(self, data: bytes) -> None:
        assert self._sock is not None, "connect() first"
        try:
            self._sock.sendall(data)
        except OSError as exc:
            raise QueryEndpointUnavailable(f"the query endpoint closed the connection: {exc.strerror or exc}") from None

    def receive_line(self) -> dict[str, Any]:
        """Read one response line."""
        assert self._sock is not None, "connect() first"
        while True:
            newline = self._buffer.find(b"\n")
            if newline >= 0:
                line = bytes(self._buffer[:newline])
                del self._buffer[: newline + 1]
                return orjson.loads(line)  # type: ignore[no-any-return]
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError:
                raise QueryEndpointUnavailable(f"no answer from {self._listen} within {self._timeout} s") from None
            if not chunk:
                raise QueryEndpointUnavailable("the query endpoint closed the connection")
            self._buffer += chunk
