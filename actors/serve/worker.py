"""A query worker process: its own interpreter serving the query socket it inherits from its parent.

Started by the query actor (:mod:`ctxplane.actors.serve.query`) as
``python -m ctxplane.actors.serve.worker --listen-fd N --channel-fd M --parent-pid P``. Over the
channel (a socket pair) the parent sends the :class:`WorkerSpec`, commit announcements (which wake
``wait_ms`` waiters) and answers to forwarded ops; the worker sends ``ready``, forwarded ops
(``health``, ``drill``, the lag of a miss) and the latency of every answer (for ``/metrics``).

Lifecycle: ``init`` → open the store → ``ready`` → the parent registers the worker for commit
announcements → ``serve`` → accept connections. ``stop`` (or SIGTERM) stops accepting and exits
once the answers in progress are written. When the parent dies, even by ``kill -9``, the channel
reads EOF (and on Linux the kernel delivers SIGKILL, ``PR_SET_PDEATHSIG``): no worker outlives it.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import socket
import sys
from typing import Any

import anyio
import structlog
from pydantic import BaseModel, ConfigDict

from ctxplane.actors.serve.engine import QueryEngine
from ctxplane.config.settings import LoggingSettings, QuerySettings, Settings, StoreSettings, secret_value
from ctxplane.runtime.channel import Channel
from ctxplane.runtime.exceptions import CtxplaneError, StoreDataError, StoreUnavailable
from ctxplane.runtime.logs import configure_logging
from ctxplane.runtime.server import LineServer
from ctxplane.runtime.store import open_store

__all__ = ("ForwardedOpFailed", "WorkerSpec", "main", "query_read_timeout_s")

log = structlog.get_logger("ctxplane.query")

_PR_SET_PDEATHSIG = 1


class WorkerSpec(BaseModel):
    """Everything a worker needs to serve, sent by the parent as the first channel message."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    index: int
    query: QuerySettings
    store: StoreSettings
    logging: LoggingSettings = LoggingSettings()
    scope: str
    required_roles: tuple[str, ...]
    features: Settings | None = None  # the process settings, when the feature plane is served
    forwarded_ops: tuple[str, ...] = ()  # ops the parent answers besides health and lag


class ForwardedOpFailed(CtxplaneError):
    """The parent failed to answer a forwarded op (its handler raised; logged there)."""


def query_read_timeout_s(settings: QuerySettings) -> float:
    """The bound on one store read of a query (PostgreSQL): half the default deadline, at most 0.5 s.

    A read on a healthy store takes milliseconds; one that has not answered by then is waiting on
    a server that is down or unreachable. Failing it there answers ``UNAVAILABLE /
    STORE_UNAVAILABLE`` (retryable) within the deadline instead of ``DEADLINE_EXCEEDED`` at it,
    and frees the pooled connection for the next request.
    """
    return min(0.5, settings.default_deadline_ms / 2000)


class _Pending:
    """A forwarded op waiting for the parent's reply."""

    __slots__ = ("answered", "reply")

    def __init__(self) -> None:
        self.answered = anyio.Event()
        self.reply: dict[str, Any] = {}


class _ParentLink:
    """The worker's side of the channel: forwarded ops awaiting answers, latencies to ship."""

    _ERRORS: dict[str, type[CtxplaneError]] = {"StoreDataError": StoreDataError, "StoreUnavailable": StoreUnavailable}

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._next_id = 0
        self._waiting: dict[int, _Pending] = {}  # forwarded ops by id
        self._observed: list[list[Any]] = []
        self._auth_failures = 0
        self._observed_ready = anyio.Event()

    async def forward(self, op: str, request: dict[str, Any], deadline_s: float) -> Any:
        self._next_id += 1
        ask_id = self._next_id
        pending = self._waiting[ask_id] = _Pending()
        try:
            # Latencies first: the parent records them before it answers this ask, so a client that
            # got this answer sees every earlier answer of this worker counted on /metrics.
            await self.flush()
            await self._channel.send({"t": "ask", "id": ask_id, "op": op, "request": request, "deadline_s": deadline_s})
            await pending.answered.wait()
        finally:
            self._waiting.pop(ask_id, None)
        reply = pending.reply
        if "error" in reply:
            raise self._ERRORS.get(reply["error"], ForwardedOpFailed)(reply.get("detail", reply["error"]))
        return reply["answer"]

    def resolve(self, reply: dict[str, Any]) -> None:
        pending = self._waiting.get(reply["id"])
        if pending is not None:  # None: the request gave up at its deadline
            pending.reply = reply
            pending.answered.set()

    def observe(self, op: str, status: str, seconds: float, count: str | None) -> None:
        self._observed.append([op, status, seconds, count])
        self._observed_ready.set()

    def observe_auth_failure(self) -> None:
        self._auth_failures += 1
        self._observed_ready.set()

    async def ship_observations(self) -> None:
        """Send the latencies observed since the last send, batched while the channel is busy."""
        while True:
            await self._observed_ready.wait()
            self._observed_ready = anyio.Event()
            await self.flush()

    async def flush(self) -> None:
        items, self._observed = self._observed, []
        auth_failures, self._auth_failures = self._auth_failures, 0
        if items or auth_failures:
            await self._channel.send({"t": "obs", "items": items, "auth_failures": auth_failures})


async def serve_worker(listen_sock: socket.socket, channel_sock: socket.socket) -> int:
    channel = await Channel.from_socket(channel_sock)
    init = await channel.receive()
    spec = WorkerSpec.model_validate(init["spec"])
    configure_logging(spec.logging)
    structlog.contextvars.bind_contextvars(query_worker=spec.index)
    try:
        store = await open_store(spec.store, inline_reads=True, read_timeout_s=query_read_timeout_s(spec.query))
    except CtxplaneError as exc:
        await channel.send({"t": "failed", "error": type(exc).__name__, "detail": str(exc)})
        return 1
    try:
        return await _serve(spec, store, channel, listen_sock)
    finally:
        with anyio.CancelScope(shield=True):
            await store.aclose()


async def _serve(spec: WorkerSpec, store: Any, channel: Channel, listen_sock: socket.socket) -> int:
    features = None
    if spec.features is not None:
        from ctxplane.actors.serve.features import build_feature_plane

        features = build_feature_plane(spec.features)
    link = _ParentLink(channel)
    q = spec.query
    servers: list[LineServer] = []
    engine = QueryEngine(
        spec.query, store=store, scope=spec.scope, required_roles=spec.required_roles, features=features,
        forward=link.forward, forwarded_ops=spec.forwarded_ops, observe=link.observe,
        served_by=lambda: {"worker": spec.index, "pid": os.getpid(), "connections": servers[0].connections},
    )
    server = LineServer(q.listen, engine.handle, sock=listen_sock, max_line=q.max_request_bytes,
                        max_connections=q.max_connections, idle_timeout_s=q.idle_timeout_s, auth_token=secret_value(q.auth_token),
                        request_read_timeout_s=q.request_read_timeout_s, on_auth_failure=link.observe_auth_failure)
    servers.append(server)
    await channel.send({"t": "ready", "pid": os.getpid()})
    stop = anyio.Event()  # a stop message, SIGTERM, or the parent gone
    parent_gone = False
    serving = False
    served = anyio.Event()  # serve() returned

    async def read_channel() -> None:
        nonlocal parent_gone, serving
        try:
            while True:
                message = await channel.receive()
                kind = message["t"]
                if kind == "commit":
                    engine.wake(message["flows"], message["frames"], positions=message["positions"],
                                everyone=message.get("all", False))
                elif kind == "reply":
                    link.resolve(message)
                elif kind == "serve" and not serving:
                    serving = True
                    tg.start_soon(run_server)
                elif kind == "stop":
                    stop.set()
        except anyio.EndOfStream:
            parent_gone = True
            stop.set()

    async def run_server() -> None:
        await server.serve()
        served.set()
        stop.set()

    async def stop_on_sigterm() -> None:
        with anyio.open_signal_receiver(signal.SIGTERM) as signals:
            async for _ in signals:
                stop.set()
                return

    async with anyio.create_task_group() as tg:
        tg.start_soon(read_channel)
        tg.start_soon(stop_on_sigterm)
        tg.start_soon(link.ship_observations)
        await stop.wait()
        if parent_gone:
            log.warning("the query actor is gone; this worker exits")
        elif serving:
            server.stop_accepting()  # then serve() returns once the answers in progress are written
            await served.wait()
            with anyio.move_on_after(1):
                await link.flush()
        tg.cancel_scope.cancel()
    return 0


def _die_with_parent(parent_pid: int) -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux), and check it has not already."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the channel's EOF still ends the worker
    if os.getppid() != parent_pid:
        sys.exit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ctxplane-query-worker", description=__doc__.splitlines()[0])
    parser.add_argument("--listen-fd", type=int, required=True)
    parser.add_argument("--channel-fd", type=int, required=True)
    parser.add_argument("--parent-pid", type=int, required=True)
    args = parser.parse_args(argv)
    # Ctrl-C reaches the whole process group: the parent decides when its workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(args.parent_pid)
    listen_sock = socket.socket(fileno=args.listen_fd)
    channel_sock = socket.socket(fileno=args.channel_fd)
    return anyio.run(serve_worker, listen_sock, channel_sock)


if __name__ == "__main__":
    sys.exit(main())
