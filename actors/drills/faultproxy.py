"""A loopback TCP fault proxy for drills: pass bytes through, cut connections, or blackhole them.

There is no toxiproxy on the machines ctxplane is tested on, and a network fault
is not something a test should fake inside the process under test. This proxy sits between a
``ctxplane run`` and its PostgreSQL server (the store DSN names the proxy's port) and has three
modes, switched at any time:

``pass``       bytes flow both ways (the normal state).
``cut``        every live connection is reset (``SO_LINGER 0``, so the peer sees a RST, not a FIN)
               and every new one is accepted and reset at once: the server looks *down*. asyncpg
               raises ``ConnectionDoesNotExistError`` on a live connection, ``ConnectionResetError``
               on connect.
``blackhole``  no byte is forwarded in either direction and new connections are held, never
               connected upstream: the server looks *unreachable* (a partition); every operation
               hangs until the client's own timeout. Bytes are held by TCP, not dropped, so a
               connection that survives until ``restore`` carries on intact.

Standalone (what ``ctxplane drill db-outage --proxy-control ...`` talks to)::

    python -m ctxplane.actors.drills.faultproxy --listen 127.0.0.1:55500 --upstream 127.0.0.1:55432 \\
        --control unix:/tmp/pgproxy.ctl

It prints one line ``faultproxy listening on HOST:PORT`` when ready. The control socket takes
newline-terminated commands ``cut``, ``blackhole``, ``restore``, ``status`` and answers each with one
JSON line (``{"mode": ..., "connections": ..., ...}``). :func:`control` sends one command.
"""

from __future__ import annotations

import argparse
import enum
import os
import signal
import socket
import struct
import sys
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import orjson
from anyio.abc import SocketAttribute, SocketStream, TaskGroup, TaskStatus

__all__ = ("FaultProxy", "Mode", "ProxyStatistics", "control", "main")

# Bytes moved per read: PostgreSQL messages are small; 64 KiB keeps a COPY-sized burst to few hops.
_CHUNK = 65536
# How long an upstream connect may take before the client's connection is reset.
_UPSTREAM_CONNECT_TIMEOUT_S = 5.0


class Mode(enum.Enum):
    PASS = "pass"
    CUT = "cut"
    BLACKHOLE = "blackhole"


@dataclass(frozen=True, slots=True)
class ProxyStatistics:
    """``mode``; ``connections``: live proxied pairs; ``accepted``/``reset``: totals since start;
    ``bytes_up``/``bytes_down``: bytes forwarded to / from the upstream."""

    mode: str
    connections: int
    accepted: int
    reset: int
    bytes_up: int
    bytes_down: int


def _reset(stream: SocketStream) -> None:
    """Close ``stream`` with a RST (SO_LINGER 0): the peer sees a reset, not an orderly close."""
    sock = stream.extra(SocketAttribute.raw_socket, None)
    if sock is not None:
        with suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class _Pair:
    """One client connection and (once connected) its upstream connection."""

    __slots__ = ("client", "scope", "upstream")

    def __init__(self, client: SocketStream) -> None:
        self.client = client
        self.upstream: SocketStream | None = None
        self.scope = anyio.CancelScope()


class FaultProxy:
    """Proxy ``listen_host:listen_port`` to ``upstream_host:upstream_port`` with switchable faults.

    ``cut``/``blackhole``/``restore`` are plain calls, safe from the proxy's event loop (use a
    blocking portal from another thread). Invariant: ``_flowing`` is set exactly while the mode is
    PASS; pumps and new connections wait on it, which is what a blackhole is.
    """

    def __init__(self, upstream_host: str, upstream_port: int, *, listen_host: str = "127.0.0.1", listen_port: int = 0) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.listen_host = listen_host
        self.listen_port = listen_port
        self.mode = Mode.PASS
        self._flowing = anyio.Event()
        self._flowing.set()
        self._pairs: set[_Pair] = set()
        self._accepted = 0
        self._reset_count = 0
        self._bytes = [0, 0]  # up, down

    # -- control --------------------------------------------------------------------------------

    def cut(self) -> None:
        """Reset every live connection and refuse (reset) new ones until :meth:`restore`."""
        self.mode = Mode.CUT
        self._flowing = anyio.Event()  # not set: held pumps wake only on restore or cancellation
        for pair in list(self._pairs):
            self._kill(pair)

    def blackhole(self) -> None:
        """Stop forwarding bytes both ways and hold new connections until :meth:`restore`."""
        self.mode = Mode.BLACKHOLE
        if self._flowing.is_set():
            self._flowing = anyio.Event()

    def restore(self) -> None:
        """Back to normal: held connections resume, new ones are proxied."""
        self.mode = Mode.PASS
        self._flowing.set()

    def statistics(self) -> ProxyStatistics:
        return ProxyStatistics(self.mode.value, len(self._pairs), self._accepted, self._reset_count, *self._bytes)

    # -- serving --------------------------------------------------------------------------------

    async def serve(self, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
        """Listen and proxy until cancelled; ``task_status.started(port)`` once listening."""
        listener = await anyio.create_tcp_listener(local_host=self.listen_host, local_port=self.listen_port)
        self.listen_port = listener.extra(SocketAttribute.local_port)
        async with listener, anyio.create_task_group() as tg:
            task_status.started(self.listen_port)
            await listener.serve(self._connection, task_group=tg)

    def _kill(self, pair: _Pair) -> None:
        self._reset_count += 1
        _reset(pair.client)
        if pair.upstream is not None:
            _reset(pair.upstream)
        pair.scope.cancel()

    async def _connection(self, client: SocketStream) -> None:
        self._accepted += 1
        pair = _Pair(client)
        async with client:
            if self.mode is Mode.CUT:
                self._reset_count += 1
                _reset(client)
                return
            self._pairs.add(pair)
            try:
                with pair.scope:
                    await self._flowing.wait()  # a blackhole holds new connections here
                    try:
                        with anyio.fail_after(_UPSTREAM_CONNECT_TIMEOUT_S):
                            pair.upstream = await anyio.connect_tcp(*self.upstream)
                    except (OSError, TimeoutError):
                        _reset(client)
                        return
                    async with pair.upstream, anyio.create_task_group() as tg:
                        tg.start_soon(self._pump, client, pair.upstream, 0, tg)
                        tg.start_soon(self._pump, pair.upstream, client, 1, tg)
            finally:
                self._pairs.discard(pair)

    async def _pump(self, source: SocketStream, sink: SocketStream, direction: int, tg: TaskGroup) -> None:
        """Copy ``source`` to ``sink``; either side closing ends the pair (both directions)."""
        try:
            while True:
                if not self._flowing.is_set():
                    await self._flowing.wait()
                data = await source.receive(_CHUNK)
                if not self._flowing.is_set():
                    # Blackholed while we were reading: hold this chunk until restored.
                    await self._flowing.wait()
                await sink.send(data)
                self._bytes[direction] += len(data)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        tg.cancel_scope.cancel()


# -- standalone process and its control socket ---------------------------------------------------


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


async def _serve_control(proxy: FaultProxy, path: Path, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
    with suppress(FileNotFoundError):
        path.unlink()
    listener = await anyio.create_unix_listener(path)
    os.chmod(path, 0o600)

    async def handle(stream: Any) -> None:
        async with stream:
            buffer = b""
            with suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                while True:
                    buffer += await stream.receive(1024)
                    while b"\n" in buffer:
                        line, buffer = buffer.split(b"\n", 1)
                        command = line.strip().decode("ascii", "replace")
                        actions: dict[str, Callable[[], None]] = {"cut": proxy.cut, "blackhole": proxy.blackhole, "restore": proxy.restore,
                                   "status": lambda: None}
                        action = actions.get(command)
                        if action is None:
                            answer: dict[str, Any] = {"error": f"unknown command {command!r}; known: {', '.join(actions)}"}
                        else:
                            action()
                            stats = proxy.statistics()
                            answer = {field: getattr(stats, field) for field in stats.__slots__}
                        await stream.send(orjson.dumps(answer) + b"\n")

    async with listener:
        task_status.started()
        await listener.serve(handle)


def control(path: str | Path, command: str, *, timeout_s: float = 5.0) -> dict[str, Any]:
    """Send one command (``cut``, ``blackhole``, ``restore``, ``status``) to a standalone proxy.

    ``path`` may carry a ``unix:`` prefix. Returns the proxy's JSON answer.

    Raises:
        OSError: the control socket cannot be reached or closed without answering.
    """
    text = str(path)
    text = text[len("unix:"):] if text.startswith("unix:") else text
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(text)
        sock.sendall(command.encode("ascii") + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(4096)
            if not chunk:
                raise OSError(f"fault proxy at {text} closed the control connection without answering")
            data += chunk
    return orjson.loads(data)  # type: ignore[no-any-return]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ctxplane.actors.drills.faultproxy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", type=_host_port, default=("127.0.0.1", 0), metavar="HOST:PORT")
    parser.add_argument("--upstream", type=_host_port, required=True, metavar="HOST:PORT")
    parser.add_argument("--control", required=True, metavar="unix:PATH", help="control socket (unix:PATH)")
    args = parser.parse_args(argv)
    control_path = Path(args.control[len("unix:"):] if args.control.startswith("unix:") else args.control)
    proxy = FaultProxy(*args.upstream, listen_host=args.listen[0], listen_port=args.listen[1])

    async def run() -> None:
        async with anyio.create_task_group() as tg:
            port = await tg.start(proxy.serve)
            await tg.start(_serve_control, proxy, control_path)
            print(f"faultproxy listening on {proxy.listen_host}:{port}", flush=True)
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _signum in signals:
                    break
            tg.cancel_scope.cancel()
        with suppress(FileNotFoundError):
            control_path.unlink()

    try:
        anyio.run(run)
    except OSError as exc:
        print(f"faultproxy: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
