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
from pathlib import Path
from typing import Any

import anyio
import orjson
import structlog
from anyio.abc import ByteStream, Listener, SocketListener, TaskStatus

from ctxplane.config.settings import is_loopback
from ctxplane.runtime.exceptions import UsageError

__all__ = ("Handler", "LineServer", "bind_listener", "error_response", "is_loopback", "parse_listen")

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
_READ_CHUNK = 65536

log = structlog.get_logger("ctxplane.server")


def error_response(code: str, detail: str, *, request_id: Any = None, retryable: bool = False) -> dict[str, Any]:
    return {"status": "ERROR", "code": code, "retryable": retryable, "detail": detail, "request_id": request_id}


def parse_listen(listen: str) -> tuple[str, str, int]:
    """``unix:PATH`` -> ("unix", PATH, 0); ``tcp://HOST:PORT`` -> ("tcp", HOST, PORT)."""
    if listen.startswith("unix:"):
        return "unix", listen[len("unix:") :], 0
    host, _, port = listen[len("tcp://") :].rpartition(":")
    return "tcp", host, int(port)


class LineServer:
    """Serve ``handler`` over ``listen``.

    Args:
        listen: ``unix:PATH`` (socket file mode 0600) or ``tcp://HOST:PORT``.
        handler: answers one decoded request object; it owns deadlines and op semantics.
        max_line: the largest request line accepted (bytes, without the newline).
        max_connections: connections beyond this are closed at once.
        idle_timeout_s: a connection silent this long is closed.
        auth_token: when set, every request must carry ``"auth"`` equal to it.
        sock: a socket already bound and listening (see :func:`bind_listener`), e.g. inherited
            from a parent process; its owner removes a Unix socket file. Default: bind ``listen``.
        drain_timeout_s: after :meth:`stop_accepting`, how long requests in progress may take.
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
        self._slots = anyio.CapacityLimiter(max_connections)
        self.connections = 0

    async def _listen(self) -> Listener[Any]:
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

    async def _connection(self, stream: ByteStream) -> None:
        async with stream:
            try:
                self._slots.acquire_nowait()
            except anyio.WouldBlock:
                with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                    await stream.send(orjson.dumps(error_response("OVERLOADED", "too many connections", retryable=True)) + b"\n")
                return
            self.connections += 1
            try:
                await self._serve_lines(stream)
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

    async def _serve_lines(self, stream: ByteStream) -> None:
        buffer = bytearray()
        discarding = False  # inside an oversized line: drop bytes up to its newline
        while True:
            with anyio.move_on_after(self._idle_timeout_s) as idle:
                chunk = await stream.receive(_READ_CHUNK)
            if idle.cancelled_caught:
                return
            buffer += chunk
            while True:
                newline = buffer.find(b"\n")
                if newline < 0:
                    if len(buffer) > self._max_line:
                        if not discarding:
                            await self._reply(stream, error_response("INVALID_REQUEST", f"request line exceeds {self._max_line} bytes"))
                        discarding = True
                        buffer.clear()
                    break
                line = bytes(buffer[:newline])
                del buffer[: newline + 1]
                if discarding:
                    discarding = False
                    continue
                if len(line) > self._max_line:
                    await self._reply(stream, error_response("INVALID_REQUEST", f"request line exceeds {self._max_line} bytes"))
                    continue
                if line.strip():
                    await self._reply(stream, await self._answer(line))

    async def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            request = orjson.loads(line)
        except orjson.JSONDecodeError:
            return error_response("INVALID_REQUEST", "request is not valid JSON")
        if not isinstance(request, dict):
            return error_response("INVALID_REQUEST", "request must be a JSON object")
        request_id = request.get("request_id")
        if self._auth is not None:
            token = request.pop("auth", None)
            if not isinstance(token, str) or not hmac.compare_digest(token.encode(), self._auth):
                return error_response("UNAUTHORIZED", "missing or wrong auth token", request_id=request_id)
        else:
            request.pop("auth", None)
        self.in_flight += 1
        try:
            return await self._handler(request)
        except Exception:  # noqa: BLE001 - a handler bug, logged with its traceback and answered
            # The handler owns op errors (the query actor answers its own, shaped per op); this is the
            # last resort for one it did not catch: answered for this request only, never the socket's end.
            log.exception("request handler failed", request_id=request_id if isinstance(request_id, str) else None)
            return error_response("INTERNAL_ERROR", "internal error", request_id=request_id)
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
            line = orjson.dumps(error_response("INTERNAL_ERROR", "the answer could not be encoded"))
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


def _unix_socket_alive(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(0.5)
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()
