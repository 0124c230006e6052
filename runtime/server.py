"""Newline-delimited JSON request server over a Unix socket or TCP (interfaces.md §5).

Generic: it knows framing, limits and transport, not ops. Per connection, requests are answered in
order (pipelining allowed). A malformed or oversized line gets an error response and the
connection carries on; nothing a client sends can crash the server or touch other connections: a
handler that raises is answered ``INTERNAL_ERROR`` for that request only, and an unexpected error
on one connection closes that connection only (both logged with their traceback).
"""

from __future__ import annotations

import errno
import hmac
import os
import socket
from collections.abc import Awaitable, Callable
from contextlib import suppress
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import anyio
import orjson
import structlog
from anyio.abc import ByteStream, SocketListener, TaskStatus
from anyio.streams.buffered import BufferedByteReceiveStream

from ctxplane.config.settings import is_loopback
from ctxplane.contracts.answers import ErrorCode, Status
from ctxplane.runtime.endpoint import parse_listen
from ctxplane.runtime.exceptions import UsageError

__all__ = (
    "Handler",
    "LineServer",
    "Peer",
    "bind_listener",
    "current_peer",
    "endpoint_alive",
    "error_response",
    "is_loopback",
    "parse_listen",
    "peer_gone",
)

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
_READ_CHUNK = 65536
# Request lines read ahead of the one being answered (pipelining); beyond, reading pauses.
_PIPELINE_DEPTH = 16


class Peer:
    """The connection a request arrived on, as its handler sees it (:func:`current_peer`).

    ``gone`` turns true when the client closes (or resets) its side — it will send nothing more,
    and may read nothing more either — or when the server stops. A handler waiting for something
    (``wait_ms``) stops waiting then and answers at once, so the slot is freed without delay.
    """

    __slots__ = ("_wake", "gone", "pending")

    def __init__(self) -> None:
        self.gone = False
        self.pending = 0  # requests read and not yet answered
        self._wake: set[anyio.Event] = set()

    def wake_when_gone(self, event: anyio.Event) -> None:
        if self.gone:
            event.set()
        else:
            self._wake.add(event)

    def forget(self, event: anyio.Event) -> None:
        self._wake.discard(event)

    def left(self) -> None:
        self.gone = True
        for event in self._wake:
            event.set()
        self._wake.clear()


_current_peer: ContextVar[Peer | None] = ContextVar("ctxplane_peer", default=None)


def current_peer() -> Peer | None:
    """The connection of the request being answered (None outside a request)."""
    return _current_peer.get()


def peer_gone() -> bool:
    """True when the client of the request being answered has closed its side."""
    peer = _current_peer.get()
    return peer is not None and peer.gone


def _is_health(line: bytes) -> bool:
    try:
        request = orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    return isinstance(request, dict) and request.get("op") == "health"

log = structlog.get_logger("ctxplane.server")


def error_response(code: ErrorCode, detail: str, *, request_id: Any = None, retryable: bool = False) -> dict[str, Any]:
    return {"status": Status.ERROR, "code": code, "retryable": retryable, "detail": detail, "request_id": request_id}


class LineServer:
    """Serve ``handler`` over ``listen``.

    Args:
        listen: ``unix:PATH`` (socket file mode 0600) or ``tcp://HOST:PORT``.
        handler: answers one decoded request object; it owns deadlines and op semantics.
        max_line: the largest request line accepted (bytes, without the newline).
        max_connections: connections beyond this are closed at once.
        idle_timeout_s: a connection silent this long (with no answer pending) is closed.
        auth_token: when set, every request must carry ``"auth"`` equal to it; a connection whose
            request fails the check is answered ``UNAUTHORIZED`` and closed, and its first request
            must arrive within ``request_read_timeout_s``.
        sock: a socket already bound and listening (see :func:`bind_listener`), e.g. inherited
            from a parent process; its owner removes a Unix socket file. Default: bind ``listen``.
        drain_timeout_s: after :meth:`stop_accepting`, how long requests in progress may take.
        request_read_timeout_s: a request line must be complete this long after its first byte.
        reserved_for_health: connections beyond ``max_connections`` that may still ask ``health``
            (one request each), so that an overload stays visible.
        on_auth_failure: called for every request that fails the token check (for a metric).
    """

    def __init__(
        self,
        listen: str,
        handler: Handler,
        *,
        max_line: int = 65536,
        max_connections: int = 256,
        idle_timeout_s: float = 300.0,
        auth_token: str | None = None,
        sock: socket.socket | None = None,
        drain_timeout_s: float = 5.0,
        request_read_timeout_s: float = 10.0,
        reserved_for_health: int = 4,
        on_auth_failure: Callable[[], None] | None = None,
    ) -> None:
        kind, host, port = parse_listen(listen)
        if kind == "tcp" and not is_loopback(host) and not auth_token:
            raise UsageError(f"query.listen: binding {host} (not loopback) requires query.auth_token")
        self._kind, self._host, self._port = kind, host, port
        self._listen_spec = listen
        self._sock = sock  # None: bound by serve() (and a Unix socket file removed after it)
        self._owns_path = False
        self._accepting: anyio.CancelScope | None = None  # the accept loop (created by serve)
        self._stop_accepting = False
        self.drain_timeout_s = drain_timeout_s
        self.in_flight = 0  # requests being answered
        self._idle: anyio.Event | None = None  # set when in_flight drops to 0 (created by serve)
        self._handler = handler
        self._max_line = max_line
        self._idle_timeout_s = idle_timeout_s
        self._auth = auth_token.encode() if auth_token else None
        self._request_read_timeout_s = request_read_timeout_s
        self._slots = anyio.CapacityLimiter(max_connections)
        self._reserved = anyio.CapacityLimiter(reserved_for_health)
        self._on_auth_failure = on_auth_failure
        self.connections = 0
        self.auth_failures = 0
        self._peers: set[Peer] = set()  # of the connections being served

    async def _listen(self) -> SocketListener:
        if self._sock is None:
            self._sock = bind_listener(self._listen_spec)
            self._owns_path = self._kind == "unix"
        return await SocketListener.from_socket(self._sock)

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Accept and answer until cancelled or until :meth:`stop_accepting`, then let the requests
        in progress finish (up to ``drain_timeout_s``) before closing every connection."""
        listener = await self._listen()
        self._idle = anyio.Event()
        self._accepting = anyio.CancelScope()
        if self._stop_accepting:
            self._accepting.cancel()
        try:
            async with listener, anyio.create_task_group() as connections:
                task_status.started()
                with self._accepting:
                    while True:
                        stream = await listener.accept()
                        connections.start_soon(self._connection, stream)
                with anyio.move_on_after(self.drain_timeout_s):
                    while self.in_flight:
                        await self._idle.wait()  # replaced by a fresh event each time it is set
                connections.cancel_scope.cancel()
        finally:
            if self._owns_path:
                with suppress(FileNotFoundError):
                    Path(self._host).unlink()

    def stop_accepting(self) -> None:
        """Stop taking connections; :meth:`serve` returns once the requests in progress are answered."""
        self._stop_accepting = True
        if self._accepting is not None:
            self._accepting.cancel()
        for peer in list(self._peers):
            peer.left()  # requests waiting for commits are answered now, as they stand

    async def _connection(self, stream: ByteStream) -> None:
        async with stream:
            try:
                self._slots.acquire_nowait()
            except anyio.WouldBlock:
                await self._overflow(stream)
                return
            self.connections += 1
            try:
                await self._serve_connection(stream)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, ConnectionError):
                pass  # the client went away: nothing to answer
            except Exception:  # noqa: BLE001 - a bug in this connection's framing, logged with its traceback
                # Not a client leaving (handled above) and not a handler error (answered per request):
                # raised, it would end serve() and close the socket for every client; closing this one
                # connection keeps it to the client that met it. Cancellation is not caught.
                log.exception("query connection failed; closing it")
            finally:
                self.connections -= 1
                self._slots.release()

    async def _overflow(self, stream: ByteStream) -> None:
        """Every slot is taken: answer one ``health`` request (so that an operator can see the
        overload) on one of a few reserved slots; anything else is ``OVERLOADED``."""
        overloaded = error_response(ErrorCode.OVERLOADED, "too many connections", retryable=True)
        try:
            self._reserved.acquire_nowait()
        except anyio.WouldBlock:
            with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, ConnectionError):
                await stream.send(orjson.dumps(overloaded) + b"\n")
            return
        try:
            line = None
            with anyio.move_on_after(self._request_read_timeout_s):
                with suppress(anyio.IncompleteRead, anyio.DelimiterNotFound, anyio.BrokenResourceError,
                              anyio.ClosedResourceError, anyio.EndOfStream, ConnectionError):
                    line = await BufferedByteReceiveStream(stream).receive_until(b"\n", self._max_line)
            with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, ConnectionError):
                await self._answer_and_reply(stream, line if line is not None and _is_health(line) else overloaded)
        finally:
            self._reserved.release()

    async def _serve_connection(self, stream: ByteStream) -> None:
        """Read requests and answer them in order, concurrently: a client that closes its side is
        seen at once, even while its requests wait (they stop waiting and are answered as they are)."""
        peer = Peer()
        if self._stop_accepting:
            peer.left()
        self._peers.add(peer)
        _current_peer.set(peer)  # this connection's task only: each connection runs in its own context
        try:
            send, receive = anyio.create_memory_object_stream[bytes | dict[str, Any]](_PIPELINE_DEPTH)
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._read_requests, stream, send, peer)
                async with receive:
                    async for item in receive:
                        try:
                            response = await self._answer_and_reply(stream, item)
                        except (anyio.BrokenResourceError, anyio.ClosedResourceError, ConnectionError):
                            break  # the client has gone: nothing more to answer
                        finally:
                            peer.pending -= 1
                        if response.get("code") == ErrorCode.UNAUTHORIZED:
                            break  # a client that fails authentication gets no second try on this connection
                tg.cancel_scope.cancel()
        finally:
            self._peers.discard(peer)

    async def _read_requests(self, stream: ByteStream, requests: Any, peer: Peer) -> None:
        """Split the byte stream into request lines (framing errors become their answers) until the
        client closes, goes silent for ``idle_timeout_s`` with nothing pending, or takes longer than
        ``request_read_timeout_s`` to complete a line (so a trickle of bytes cannot hold a slot)."""
        buffer = bytearray()
        discarding = False  # inside an oversized line: drop bytes up to its newline
        line_started = 0.0  # when the partial line in ``buffer`` (or being discarded) began
        # With a token required, the first request must arrive promptly: an unauthenticated
        # connection holds a slot for one request read at most.
        authenticated = self._auth is None
        try:
            async with requests:
                while True:
                    partial = bool(buffer) or discarding
                    if partial:
                        timeout = line_started + self._request_read_timeout_s - anyio.current_time()
                    elif not authenticated:
                        timeout = self._request_read_timeout_s
                    else:
                        timeout = self._idle_timeout_s
                    with anyio.move_on_after(max(0.0, timeout)) as waited:
                        chunk = await stream.receive(_READ_CHUNK)
                    if waited.cancelled_caught:
                        if partial:
                            peer.pending += 1
                            await requests.send(error_response(ErrorCode.INVALID_REQUEST,
                                f"request line not completed within {self._request_read_timeout_s:g} s "
                                "(query.request_read_timeout_s)"))
                            return
                        if peer.pending and authenticated:
                            continue  # silent while its answers are being built: not idle
                        return
                    if not partial:
                        line_started = anyio.current_time()
                    buffer += chunk
                    while True:
                        newline = buffer.find(b"\n")
                        if newline < 0:
                            if len(buffer) > self._max_line:
                                if not discarding:
                                    peer.pending += 1
                                    await requests.send(error_response(ErrorCode.INVALID_REQUEST, f"request line exceeds {self._max_line} bytes"))
                                discarding = True
                                buffer.clear()
                            break
                        line = bytes(buffer[:newline])
                        del buffer[: newline + 1]
                        line_started = anyio.current_time()  # what is left of the chunk starts a new line
                        if discarding:
                            discarding = False
                            continue
                        if len(line) > self._max_line:
                            peer.pending += 1
                            await requests.send(error_response(ErrorCode.INVALID_REQUEST, f"request line exceeds {self._max_line} bytes"))
                            continue
                        if line.strip():
                            authenticated = True  # a wrong token closes the connection after its answer
                            peer.pending += 1
                            await requests.send(line)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, ConnectionError):
            pass  # the client closed (or reset) its side
        finally:
            peer.left()

    async def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            request = orjson.loads(line)
        except orjson.JSONDecodeError:
            return error_response(ErrorCode.INVALID_REQUEST, "request is not valid JSON")
        if not isinstance(request, dict):
            return error_response(ErrorCode.INVALID_REQUEST, "request must be a JSON object")
        request_id = request.get("request_id")
        if self._auth is not None:
            token = request.pop("auth", None)
            if not isinstance(token, str) or not hmac.compare_digest(token.encode(), self._auth):
                self.auth_failures += 1
                if self._on_auth_failure is not None:
                    self._on_auth_failure()
                return error_response(ErrorCode.UNAUTHORIZED, "missing or wrong auth token", request_id=request_id)
        else:
            request.pop("auth", None)
        try:
            return await self._handler(request)
        except Exception:  # noqa: BLE001 - a handler bug, logged with its traceback and answered
            # The handler owns op errors (the query actor answers its own, shaped per op); this is the
            # last resort for one it did not catch: answered for this request only, never the socket's end.
            log.exception("request handler failed", request_id=request_id if isinstance(request_id, str) else None)
            return error_response(ErrorCode.INTERNAL_ERROR, "internal error", request_id=request_id)

    async def _answer_and_reply(self, stream: ByteStream, item: bytes | dict[str, Any]) -> dict[str, Any]:
        """Answer one request line (or send the answer a framing error already has) and write it;
        counted in ``in_flight`` until written, so that a drain never cuts an answer off."""
        self.in_flight += 1
        try:
            response = item if isinstance(item, dict) else await self._answer(item)
            await self._reply(stream, response)
            return response
        finally:
            self.in_flight -= 1
            if not self.in_flight and self._idle is not None:
                self._idle.set()
                self._idle = anyio.Event()

    @staticmethod
    async def _reply(stream: ByteStream, response: dict[str, Any]) -> None:
        try:
            line = orjson.dumps(response, option=orjson.OPT_NON_STR_KEYS)
        except TypeError:  # a value JSON cannot carry (an int beyond 64 bits): still one answer per line
            log.exception("answer not encodable", request_id=str(response.get("request_id"))[:128])
            line = orjson.dumps(error_response(ErrorCode.INTERNAL_ERROR, "the answer could not be encoded"))
        await stream.send(line + b"\n")


def bind_listener(listen: str, *, backlog: int = 1024) -> socket.socket:
    """Bind and listen on ``listen`` (``unix:PATH``, file mode 0600, or ``tcp://HOST:PORT``).

    Raises:
        UsageError: the address is in use (a live Unix socket is never taken over; a stale socket
            file left by a killed process is replaced), or cannot be bound; one line naming
            ``query.listen``.
    """
    kind, host, port = parse_listen(listen)
    if kind == "tcp":
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            family, _, _, _, address = infos[0]
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(address)
                sock.listen(backlog)
            except BaseException:
                sock.close()
                raise
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UsageError(f"query.listen: {host}:{port} is already in use") from None
            raise UsageError(f"query.listen: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        return sock
    path = Path(host)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        if _unix_socket_alive(path):
            raise UsageError(f"query.listen: {path} is in use by another running process")
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, 0o600)  # before listen(): nobody can connect while the mode is the umask's
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise UsageError(f"query.listen: cannot listen on {path}: {exc.strerror or exc}") from None
    return sock


def endpoint_alive(listen: str, *, timeout_s: float = 0.5) -> bool:
    """Whether something accepts connections on ``listen`` (``query.listen``): the sign of a
    running process that operator commands check before they write. Connects and closes, sends
    nothing. A stale Unix socket file (its process was killed) refuses: not alive."""
    kind, host, port = parse_listen(listen)
    if kind == "unix":
        return Path(host).exists() and _unix_socket_alive(Path(host), timeout_s)
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError:
        return False
    return True


def _unix_socket_alive(path: Path, timeout_s: float = 0.5) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(timeout_s)
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()
