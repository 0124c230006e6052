"""Python clients for the query endpoint (async and sync), used by decision services, the CLI and the tests.

Example::

    pins = Pins.from_mapping(run["pins"])  # e.g. an entry of `ctxplane runs --json`
    with Client.from_config("config/profiles/local.yaml", pins=pins) as client:
        answer = client.resolve_flow_binding("flow-7", wait_ms=200)   # READY, MISSING_*, CONFLICT
        features = client.get_features([("flow_id", "flow-7")], [("core_features", "v1")], "2026-02-07T05:03:00Z")

The typed methods (``resolve_flow_binding``, ``fetch_join_frame``, ``get_features``, ``health``,
``basis``) reuse one connection, give every call one deadline, retry only answers marked
``retryable`` and raise :class:`QueryError` for error answers (see ``runtime/client_calls.py``).
``request`` / ``request_many`` send raw request objects and return whatever is answered.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterable, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any, Self

import anyio
import orjson
from anyio.abc import ByteStream

from ctxplane.runtime.client_calls import (
    FeatureGroup,
    FeatureKey,
    Pins,
    PinsLike,
    QueryEndpointUnavailable,
    QueryError,
    QueryTimeout,
    _attempt_request,
    _Attempts,
    _Calls,
    _timeout_s,
    is_error,
)
from ctxplane.runtime.endpoint import parse_listen

__all__ = ("AsyncClient", "Client", "Pins", "QueryEndpointUnavailable", "QueryError", "QueryTimeout", "is_error")


def _encode(request: dict[str, Any], auth: str | None) -> bytes:
    if auth is not None:
        request = {**request, "auth": auth}
    return orjson.dumps(request) + b"\n"


def _settings_of(config: str | os.PathLike[str]) -> tuple[str, str | None]:
    from ctxplane.config.settings import load_settings, secret_value

    settings = load_settings(config)
    return settings.query.listen, secret_value(settings.query.auth_token)


def _default_pins(pins: PinsLike | None) -> Pins | None:
    return pins if pins is None or isinstance(pins, Pins) else Pins.from_mapping(pins)


class AsyncClient(_Calls):
    """One connection; requests may be pipelined with :meth:`request_many`. Typed calls (the
    ``async`` twins of :class:`Client`'s) connect on first use and are serialised on the connection.

    Args:
        listen: ``unix:PATH`` or ``tcp://HOST:PORT`` (``query.listen``).
        auth_token: ``query.auth_token``, when the endpoint requires one.
        timeout_s: connect timeout, and the read timeout of :meth:`receive` / :meth:`request`.
        pins: default pins of the typed calls.
        deadline_ms: default deadline of a typed call (all its attempts), at least its ``wait_ms``.
        max_attempts: attempts per typed call at most (retryable answers, broken connections).
    """

    def __init__(self, listen: str, *, auth_token: str | None = None, timeout_s: float = 10.0,
                 pins: PinsLike | None = None, deadline_ms: int = 1000, max_attempts: int = 4) -> None:
        self._listen = listen
        self._auth = auth_token
        self._timeout = timeout_s
        self._stream: ByteStream | None = None
        self._buffer = bytearray()
        self._lock = anyio.Lock()
        self._pins = _default_pins(pins)
        self._deadline_ms = deadline_ms
        self._max_attempts = max_attempts
        self._answered = 0  # answers read on the current connection (> 0: it is being reused)

    @classmethod
    def from_config(cls, config: str | os.PathLike[str], **options: Any) -> AsyncClient:
        """A client of the endpoint a configuration file names (its ``query.listen`` and token)."""
        listen, token = _settings_of(config)
        return cls(listen, auth_token=token, **options)

    async def connect(self) -> Self:
        kind, host, port = parse_listen(self._listen)
        try:
            with anyio.fail_after(self._timeout):
                if kind == "unix":
                    self._stream = await anyio.connect_unix(host)
                else:
                    self._stream = await anyio.connect_tcp(host, port)
        except (OSError, TimeoutError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc) or f"no connection within {self._timeout} s"
            raise QueryEndpointUnavailable(f"cannot reach the query endpoint {self._listen}: {reason}") from None
        return self

    async def __aenter__(self) -> Self:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            self._buffer.clear()
            self._answered = 0
            try:
                await stream.aclose()
            except (OSError, anyio.BrokenResourceError):
                pass  # already broken: closing it is all that was left to do

    async def send_raw(self, data: bytes) -> None:
        """Send bytes as they are (tests use this for malformed input)."""
        assert self._stream is not None, "connect() first"
        try:
            await self._stream.send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            raise QueryEndpointUnavailable("the query endpoint closed the connection") from exc

    async def receive(self, timeout_s: float | None = None) -> dict[str, Any]:
        """Read one response line (within ``timeout_s``, default the client's ``timeout_s``).

        Raises:
            TimeoutError: no complete line in time (typed calls turn it into :class:`QueryTimeout`).
            QueryEndpointUnavailable: the endpoint closed the connection.
        """
        assert self._stream is not None, "connect() first"
        with anyio.fail_after(self._timeout if timeout_s is None else timeout_s):
            while True:
                newline = self._buffer.find(b"\n")
                if newline >= 0:
                    line = bytes(self._buffer[:newline])
                    del self._buffer[: newline + 1]
                    return orjson.loads(line)  # type: ignore[no-any-return]
                try:
                    self._buffer += await self._stream.receive(65536)
                except (anyio.EndOfStream, anyio.BrokenResourceError, OSError) as exc:
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

    # -- typed calls (see runtime/client_calls.py for their semantics) ---------------------------

    async def resolve_flow_binding(self, flow_id: str, pins: PinsLike | None = None, *, wait_ms: int = 0,
                                   deadline_ms: int | None = None, request_id: str | None = None) -> dict[str, Any]:
        """The join-plane answer for ``flow_id``: READY with the frame, MISSING_*, or CONFLICT.

        Raises:
            QueryError: an error answer (INVALID_REQUEST, UNAVAILABLE), after the retries it allows.
            QueryTimeout / QueryEndpointUnavailable: no answer within the deadline / no endpoint.
        """
        request = self._resolve_request(flow_id, pins, wait_ms, request_id)
        return await self._call(request, self._deadline(deadline_ms, wait_ms))

    async def fetch_join_frame(self, join_frame_key: Mapping[str, Any] | tuple[str, int], pins: PinsLike | None = None, *,
                               wait_ms: int = 0, deadline_ms: int | None = None,
                               request_id: str | None = None) -> dict[str, Any]:
        """The frame of ``join_frame_key`` (``{merchant_id, arrival_seq}`` as answered by
        :meth:`resolve_flow_binding`, or ``(merchant_id, arrival_seq)``); raises as it does."""
        request = self._frame_request(join_frame_key, pins, wait_ms, request_id)
        return await self._call(request, self._deadline(deadline_ms, wait_ms))

    async def get_features(self, keys: Iterable[FeatureKey], groups: Iterable[FeatureGroup], as_of: str | datetime,
                           pins: PinsLike | None = None, *, wait_ms: int = 0, deadline_ms: int | None = None,
                           graph_resolution_mode: str | None = None, request_id: str | None = None) -> dict[str, Any]:
        """Features of ``keys`` (``(key_type, key_id)``) in ``groups`` (``(name, version)``) as of
        ``as_of`` (any RFC 3339 instant, or an aware datetime): the ``OK`` answer with its snapshot.

        Raises:
            QueryError: an error answer (MISSING_PINS, INVALID_REQUEST, UNAVAILABLE, ...).
            QueryTimeout / QueryEndpointUnavailable: as :meth:`resolve_flow_binding`.
        """
        request = self._features_request(keys, groups, as_of, pins, wait_ms, graph_resolution_mode, request_id)
        return await self._call(request, self._deadline(deadline_ms, wait_ms))

    async def health(self, *, deadline_ms: int | None = None) -> dict[str, Any]:
        """The health report (``{"status": Status.OK, "health": {...}}``)."""
        return await self._call({"op": "health"}, self._deadline(deadline_ms, 0))

    async def basis(self, plane: str | None = None, *, deadline_ms: int | None = None) -> dict[str, Any]:
        """The applied offset basis per plane (``plane``: ``join`` or ``features``; default both)."""
        request: dict[str, Any] = {"op": "basis"} if plane is None else {"op": "basis", "plane": plane}
        return await self._call(request, self._deadline(deadline_ms, 0))

    async def _call(self, request: dict[str, Any], deadline_ms: int) -> dict[str, Any]:
        attempts = _Attempts(deadline_ms, self._max_attempts)
        async with self._lock:
            while True:
                budget = attempts.budget_ms()
                if budget is None:
                    raise QueryTimeout(f"no answer from {self._listen} within {deadline_ms} ms")
                reused = self._stream is not None and self._answered > 0
                try:
                    answer = await self._roundtrip(_attempt_request(request, budget), _timeout_s(budget))
                except QueryTimeout:
                    raise
                except QueryEndpointUnavailable:
                    delay = attempts.backoff_s(reused_connection_lost=reused)
                    if delay is None:
                        raise
                    await anyio.sleep(delay)
                    continue
                if not is_error(answer):
                    return answer
                delay = attempts.backoff_s() if answer.get("retryable") is True else None
                if delay is None:
                    raise QueryError(answer, attempts.sent)
                await anyio.sleep(delay)

    async def _roundtrip(self, request: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """One request and its answer on the (re)used connection; any failure drops the connection."""
        try:
            if self._stream is None:
                await self.connect()
            await self.send_raw(_encode(request, self._auth))
            answer = await self.receive(timeout_s)
        except TimeoutError:
            await self.aclose()
            raise QueryTimeout(f"no answer from {self._listen} within {timeout_s:.3f} s") from None
        except QueryEndpointUnavailable:
            await self.aclose()
            raise
        self._answered += 1
        return answer


class Client(_Calls):
    """Blocking client over a plain socket (no event loop needed). One connection, opened by
    :meth:`connect` or by the first typed call, and reused; not for use by several threads at once.

    Args: as :class:`AsyncClient`.
    """

    def __init__(self, listen: str, *, auth_token: str | None = None, timeout_s: float = 10.0,
                 pins: PinsLike | None = None, deadline_ms: int = 1000, max_attempts: int = 4) -> None:
        self._listen = listen
        self._auth = auth_token
        self._timeout = timeout_s
        self._sock: socket.socket | None = None
        self._buffer = bytearray()
        self._pins = _default_pins(pins)
        self._deadline_ms = deadline_ms
        self._max_attempts = max_attempts
        self._answered = 0  # answers read on the current connection (> 0: it is being reused)

    @classmethod
    def from_config(cls, config: str | os.PathLike[str], **options: Any) -> Client:
        """A client of the endpoint a configuration file names (its ``query.listen`` and token)."""
        listen, token = _settings_of(config)
        return cls(listen, auth_token=token, **options)

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
            self._buffer.clear()
            self._answered = 0

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
                raise QueryTimeout(f"no answer from {self._listen} within {self._sock.gettimeout()} s") from None
            except OSError as exc:  # reset by the peer
                raise QueryEndpointUnavailable(f"the query endpoint closed the connection: {exc.strerror or exc}") from None
            if not chunk:
                raise QueryEndpointUnavailable("the query endpoint closed the connection")
            self._buffer += chunk

    # -- typed calls (see runtime/client_calls.py for their semantics) ---------------------------

    def resolve_flow_binding(self, flow_id: str, pins: PinsLike | None = None, *, wait_ms: int = 0,
                             deadline_ms: int | None = None, request_id: str | None = None) -> dict[str, Any]:
        """The join-plane answer for ``flow_id``: READY with the frame, MISSING_*, or CONFLICT.

        Raises:
            QueryError: an error answer (INVALID_REQUEST, UNAVAILABLE), after the retries it allows.
            QueryTimeout / QueryEndpointUnavailable: no answer within the deadline / no endpoint.
        """
        request = self._resolve_request(flow_id, pins, wait_ms, request_id)
        return self._call(request, self._deadline(deadline_ms, wait_ms))

    def fetch_join_frame(self, join_frame_key: Mapping[str, Any] | tuple[str, int], pins: PinsLike | None = None, *,
                         wait_ms: int = 0, deadline_ms: int | None = None, request_id: str | None = None) -> dict[str, Any]:
        """The frame of ``join_frame_key`` (``{merchant_id, arrival_seq}`` as answered by
        :meth:`resolve_flow_binding`, or ``(merchant_id, arrival_seq)``); raises as it does."""
        request = self._frame_request(join_frame_key, pins, wait_ms, request_id)
        return self._call(request, self._deadline(deadline_ms, wait_ms))

    def get_features(self, keys: Iterable[FeatureKey], groups: Iterable[FeatureGroup], as_of: str | datetime,
                     pins: PinsLike | None = None, *, wait_ms: int = 0, deadline_ms: int | None = None,
                     graph_resolution_mode: str | None = None, request_id: str | None = None) -> dict[str, Any]:
        """Features of ``keys`` (``(key_type, key_id)``) in ``groups`` (``(name, version)``) as of
        ``as_of`` (any RFC 3339 instant, or an aware datetime): the ``OK`` answer with its snapshot.

        Raises:
            QueryError: an error answer (MISSING_PINS, INVALID_REQUEST, UNAVAILABLE, ...).
            QueryTimeout / QueryEndpointUnavailable: as :meth:`resolve_flow_binding`.
        """
        request = self._features_request(keys, groups, as_of, pins, wait_ms, graph_resolution_mode, request_id)
        return self._call(request, self._deadline(deadline_ms, wait_ms))

    def health(self, *, deadline_ms: int | None = None) -> dict[str, Any]:
        """The health report (``{"status": Status.OK, "health": {...}}``)."""
        return self._call({"op": "health"}, self._deadline(deadline_ms, 0))

    def basis(self, plane: str | None = None, *, deadline_ms: int | None = None) -> dict[str, Any]:
        """The applied offset basis per plane (``plane``: ``join`` or ``features``; default both)."""
        request: dict[str, Any] = {"op": "basis"} if plane is None else {"op": "basis", "plane": plane}
        return self._call(request, self._deadline(deadline_ms, 0))

    def _call(self, request: dict[str, Any], deadline_ms: int) -> dict[str, Any]:
        attempts = _Attempts(deadline_ms, self._max_attempts)
        while True:
            budget = attempts.budget_ms()
            if budget is None:
                raise QueryTimeout(f"no answer from {self._listen} within {deadline_ms} ms")
            reused = self._sock is not None and self._answered > 0
            try:
                answer = self._roundtrip(_attempt_request(request, budget), _timeout_s(budget))
            except QueryTimeout:
                raise
            except QueryEndpointUnavailable:
                delay = attempts.backoff_s(reused_connection_lost=reused)
                if delay is None:
                    raise
                time.sleep(delay)  # backoff between attempts, not a synchronisation
                continue
            if not is_error(answer):
                return answer
            delay = attempts.backoff_s() if answer.get("retryable") is True else None
            if delay is None:
                raise QueryError(answer, attempts.sent)
            time.sleep(delay)

    def _roundtrip(self, request: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """One request and its answer on the (re)used connection; any failure drops the connection."""
        try:
            if self._sock is None:
                self.connect()
            assert self._sock is not None
            self._sock.settimeout(timeout_s)
            self._send(_encode(request, self._auth))
            answer = self.receive_line()
            self._sock.settimeout(self._timeout)  # raw request() keeps the client's own timeout
        except QueryEndpointUnavailable:
            self.close()
            raise
        self._answered += 1
        return answer
