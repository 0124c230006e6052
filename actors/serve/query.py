"""The query actor: owns the listening socket and supervises the query worker processes serving it.

Decision-time queries must never wait for ingest. In the supervisor's interpreter they would share
one GIL with the partition actors and the store-writer; each worker (``query.workers``, a process
of its own: :mod:`ctxplane.actors.serve.worker`) accepts on the shared socket and answers from its
own store connections. The actor:

- binds the socket (Unix 0600 or TCP) once, so restarts of a worker never drop it;
- starts each worker and restarts one that dies, with backoff, counted in the restart metrics
  (``supervisor="query"``, ``child="query-worker-N"``); too many restarts in a period crash the
  actor, so its own supervisor takes over;
- relays every ``Committed`` announcement of the store-writer to every worker, which wakes its
  ``wait_ms`` waiters (coalesced into one wake-everyone message if a worker falls behind);
- answers the ops workers forward: ``health``, the lag of a miss, and ops added with
  :meth:`QueryActor.add_op` (``drill``);
- records every answer's latency and health counters shipped by the workers (``/metrics``);
- on stop, lets each worker finish the answers in progress, then removes the socket file.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from contextlib import suppress
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import orjson
import structlog
from anyio.abc import Process, TaskStatus

from ctxplane.actors.serve.engine import OpHandler
from ctxplane.actors.serve.worker import WorkerSpec
from ctxplane.config.settings import REVEAL_SECRETS, LoggingSettings, QuerySettings, StoreSettings
from ctxplane.contracts.answers import Status
from ctxplane.contracts.messages import Committed
from ctxplane.runtime.channel import Channel, channel_pair
from ctxplane.runtime.endpoint import parse_listen
from ctxplane.runtime.exceptions import (
    ActorUnavailable,
    AskTimeout,
    CtxplaneError,
    StoreDataError,
    StoreUnavailable,
    UsageError,
)
from ctxplane.runtime.kernel import Actor, ActorContext, ActorRef, Backoff, Intensity, RestartWindow, Retry
from ctxplane.runtime.server import bind_listener

__all__ = ("QueryActor", "QueryWorkersFailing")

log = structlog.get_logger("ctxplane.query")

WORKER_START_TIMEOUT_S = 60.0
# Commit announcements queued for one worker beyond this are folded into one wake-everyone message.
MAX_QUEUED_ANNOUNCEMENTS = 256
WORKER_RESTART_INTENSITY = Intensity(max_restarts=10, period=30.0)
WORKER_BACKOFF = Backoff(initial=0.1, maximum=5.0)
_WAKE_EVERYONE = orjson.dumps({"t": "commit", "flows": [], "frames": [], "positions": True, "all": True})


class QueryWorkersFailing(CtxplaneError):
    """Query workers died more often than the restart intensity allows: the query actor crashes,
    so that its supervisor restarts it (with the socket) and escalates if that does not help."""


class QueryWorkerFailed(CtxplaneError):
    """A query worker process exited (or could not start) while the actor was running."""


class _Worker:
    """The parent's side of one running worker process."""

    def __init__(self, index: int, process: Process, channel: Channel) -> None:
        self.index = index
        self.process = process
        self.channel = channel
        self.pid = process.pid
        self._outbox: deque[bytes] = deque()
        self._queued = anyio.Event()

    def announce(self, encoded: bytes) -> None:
        """Queue a commit announcement; a worker that falls behind gets one wake-everyone instead."""
        if len(self._outbox) >= MAX_QUEUED_ANNOUNCEMENTS:
            self._outbox.clear()
            self._outbox.append(_WAKE_EVERYONE)
        self._outbox.append(encoded)
        self._queued.set()

    async def send_announcements(self) -> None:
        while True:
            await self._queued.wait()
            self._queued = anyio.Event()
            while self._outbox:
                await self.channel.send_encoded(self._outbox.popleft())


class QueryActor(Actor):
    def __init__(
        self,
        settings: QuerySettings,
        *,
        store_settings: StoreSettings,
        scope: str,
        required_roles: tuple[str, ...],
        checkpoint: ActorRef,
        health: ActorRef,
        features: Any = None,
        observer: Any = None,
        counts: Counter[str] | None = None,
        logging: LoggingSettings | None = None,
        restart_intensity: Intensity = WORKER_RESTART_INTENSITY,
        backoff: Backoff = WORKER_BACKOFF,
    ) -> None:
        self._settings = settings
        self._store_settings = store_settings
        self._scope = scope
        self._required_roles = required_roles
        self._checkpoint = checkpoint
        self._health = health
        self._features = features
        self._observer = observer
        self._counts: Counter[str] = counts if counts is not None else Counter()
        self._logging = logging or LoggingSettings()
        self._intensity = restart_intensity
        self._backoff = backoff
        self._rng = random.Random()
        self._ops: dict[str, OpHandler] = {}  # answered here, for the workers that forward them
        self._workers: dict[int, _Worker] = {}
        self._stopping = False
        self._restarts = RestartWindow(self._intensity)
        self.commits_seen = 0

    def add_op(self, op: str, handler: OpHandler) -> None:
        """Serve ``op`` with ``handler(request, deadline_s)``, called in this process (on the event
        loop of the actors) for the worker that received it, under that request's deadline and
        pending limit like the built-in ops. Call before ``run``."""
        self._ops[op] = handler

    @property
    def worker_pids(self) -> list[int]:
        return [w.pid for _, w in sorted(self._workers.items())]

    async def run(self, ctx: ActorContext, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        listener = bind_listener(self._settings.listen)
        try:
            await self._serve(ctx, listener, task_status)
        except BaseExceptionGroup as group:
            # One worker's failure (at start, or beyond the restart intensity) is the actor's failure,
            # raised bare so that the supervisor and its observer see what it was.
            raise _sole_error(group) from None
        finally:
            listener.close()
            kind, path, _ = parse_listen(self._settings.listen)
            if kind == "unix":
                with suppress(FileNotFoundError):
                    Path(path).unlink()
        await self.stopping()

    async def _serve(self, ctx: ActorContext, listener: socket.socket, task_status: TaskStatus[None]) -> None:
        async with anyio.create_task_group() as tg:
            async with anyio.create_task_group() as starting:  # the workers start side by side
                for index in range(self._settings.workers):
                    starting.start_soon(partial(tg.start, self._keep_worker, index, listener))
            await self.started(ctx)
            task_status.started()
            log.info("query endpoint listening", listen=self._settings.listen, workers=self._settings.workers,
                     pids=self.worker_pids)
            while True:
                message = await ctx.mailbox.get()
                if ctx.is_stop(message):
                    break
                payload, reply = ctx.unwrap(message)
                if type(payload) is Committed:
                    self._announce(payload)
                if reply is not None:
                    reply.send({"workers": self.worker_pids})
            await self._stop_workers()
            tg.cancel_scope.cancel()

    # -- commit announcements ---------------------------------------------------------------

    def _announce(self, committed: Committed) -> None:
        self.commits_seen += 1
        encoded = orjson.dumps({
            "t": "commit", "flows": list(committed.touched_flows), "frames": list(committed.touched_frames),
            "positions": bool(committed.positions),
        })
        for worker in self._workers.values():
            worker.announce(encoded)

    # -- worker supervision -----------------------------------------------------------------

    async def _keep_worker(self, index: int, listener: socket.socket, *,
                           task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run worker ``index``, restarting it when it dies, until the actor stops.

        The first start reports to the actor's own start (a worker that cannot start fails it, e.g.
        an unreachable store); later ones are restarts, with backoff, within the restart intensity.
        """
        retry = Retry(self._backoff, rng=self._rng)
        ready = False

        def on_ready() -> None:
            nonlocal ready
            if not ready:
                ready = True
                task_status.started()

        while True:
            started_at = anyio.current_time()
            try:
                await self._run_worker(index, listener, on_ready)
                reason: BaseException = QueryWorkerFailed(f"query worker {index} exited")
            except CtxplaneError as exc:
                if not ready:
                    raise  # the first start failed: the actor's start fails with it
                reason = exc
            if self._stopping:
                return
            now = anyio.current_time()
            if self._restarts.charge(now):
                raise QueryWorkersFailing(
                    f"query workers restarted {len(self._restarts)} times in {self._intensity.period:g} s; last: {reason}"
                ) from reason
            delay = retry.failed(up_for=now - started_at)
            log.warning("query worker died; restarting it", worker=index, error=str(reason), delay_s=round(delay, 3))
            if self._observer is not None:
                self._observer.on_restart("query", f"query-worker-{index}", reason, delay)
            await anyio.sleep(delay)

    def _spec(self, index: int) -> dict[str, Any]:
        features = getattr(self._features, "settings", None)
        return WorkerSpec(
            index=index, query=self._settings, store=self._store_settings, logging=self._logging, scope=self._scope,
            required_roles=self._required_roles, features=features, forwarded_ops=tuple(self._ops),
        ).model_dump(mode="json", context=REVEAL_SECRETS)  # the worker connects and checks tokens itself

    async def _run_worker(self, index: int, listener: socket.socket, on_ready: Callable[[], None]) -> None:
        """Start worker ``index`` and serve its channel until it exits (``on_ready`` once it serves)."""
        mine, theirs = channel_pair()
        try:
            command = [sys.executable, "-m", "ctxplane.actors.serve.worker", "--listen-fd", str(listener.fileno()),
                       "--channel-fd", str(theirs.fileno()), "--parent-pid", str(os.getpid())]
            process = await anyio.open_process(command, stdin=subprocess.DEVNULL, stdout=None, stderr=None,
                                               pass_fds=(listener.fileno(), theirs.fileno()))
        finally:
            theirs.close()
        channel = await Channel.from_socket(mine)
        worker = _Worker(index, process, channel)
        try:
            await channel.send({"t": "init", "spec": self._spec(index)})
            with anyio.move_on_after(WORKER_START_TIMEOUT_S) as start:
                hello = await channel.receive()
            if start.cancelled_caught:
                raise QueryWorkerFailed(f"query worker {index} did not start within {WORKER_START_TIMEOUT_S:g} s")
            if hello["t"] == "failed":
                raise _start_error(hello)
            self._workers[index] = worker  # announcements from here on, before it serves: none is missed
            await channel.send({"t": "serve"})
            on_ready()
            async with anyio.create_task_group() as tg:
                tg.start_soon(worker.send_announcements)
                try:
                    while True:
                        message = await channel.receive()
                        if message["t"] == "ask":
                            tg.start_soon(self._answer, worker, message)
                        elif message["t"] == "obs":
                            self._record(message["items"], message.get("auth_failures", 0))
                except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    tg.cancel_scope.cancel()  # the worker has gone: so have its pending asks
            code = await _exit_code(process)
            raise QueryWorkerFailed(f"query worker {index} (pid {process.pid}) exited with code {code}")
        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError) as exc:  # gone before it served
            code = await _exit_code(process)
            raise QueryWorkerFailed(f"query worker {index} (pid {process.pid}) exited with code {code}") from exc
        finally:
            self._workers.pop(index, None)
            with anyio.CancelScope(shield=True):
                await channel.aclose()
                if process.returncode is None:
                    with suppress(ProcessLookupError):
                        process.kill()
                await process.wait()

    async def _stop_workers(self) -> None:
        """Ask every worker to stop; each exits after writing the answers in progress."""
        self._stopping = True
        workers = list(self._workers.values())
        for worker in workers:
            with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                await worker.channel.send({"t": "stop"})
        with anyio.move_on_after(10):
            for worker in workers:
                await worker.process.wait()

    # -- what the workers ask of this process ------------------------------------------------

    async def _answer(self, worker: _Worker, ask: dict[str, Any]) -> None:
        op, request, deadline_s = ask["op"], ask["request"], ask["deadline_s"]
        reply: dict[str, Any] = {"t": "reply", "id": ask["id"]}
        try:
            with anyio.move_on_after(deadline_s):
                reply["answer"] = await self._parent_op(op)(request, deadline_s)
            if "answer" not in reply:
                reply.update(error="AskTimeout", detail=f"{op}: no answer within {deadline_s:g} s")
        except (StoreDataError, StoreUnavailable) as exc:
            reply.update(error=type(exc).__name__, detail=str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug in an op, logged with its traceback and answered
            log.exception("query op failed", op=op, request_id=str(request.get("request_id"))[:128])
            reply.update(error=type(exc).__name__, detail=f"internal error ({type(exc).__name__})")
        with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            await worker.channel.send(reply)

    def _parent_op(self, op: str) -> Callable[[dict[str, Any], float], Awaitable[Any]]:
        if op == "health":
            return self._health_op
        if op == "lag":
            return self._lag
        return self._ops[op]

    def _record(self, items: list[list[Any]], auth_failures: int) -> None:
        if auth_failures and self._observer is not None:
            self._observer.on_auth_failures(auth_failures)
        for op, status, seconds, count in items:
            if count is not None:
                self._counts[count] += 1
            if self._observer is not None:
                self._observer.on_query(op, status, seconds)

    async def _lag(self, request: dict[str, Any], deadline_s: float) -> dict[str, Any] | None:
        try:
            snap = await self._checkpoint.ask("positions", timeout=deadline_s)
        except (AskTimeout, ActorUnavailable):
            return None
        parts = [p for p in snap["partitions"] if p["plane"] == "join"]  # type: ignore[index]
        lags = [p["lag"] for p in parts if p["lag"] is not None]
        return {"partitions": len(parts), "total_lag": sum(lags) if lags else None}

    async def _health_op(self, request: dict[str, Any], deadline_s: float) -> dict[str, Any]:
        try:
            report = await self._health.ask("report", timeout=max(0.05, deadline_s * 0.8))
        except (AskTimeout, ActorUnavailable) as exc:
            return {"status": Status.OK, "request_id": request.get("request_id"),
                    "health": {"state": "RED", "reasons": ["HEALTH_UNAVAILABLE"], "detail": str(exc)}}
        return {"status": Status.OK, "request_id": request.get("request_id"), "health": report}


def _start_error(hello: dict[str, Any]) -> CtxplaneError:
    """The error a worker reported at start, as the type the rest of the process expects."""
    kinds: dict[str, type[CtxplaneError]] = {"StoreUnavailable": StoreUnavailable, "UsageError": UsageError}
    return kinds.get(hello.get("error", ""), QueryWorkerFailed)(hello.get("detail", "query worker failed to start"))


def _sole_error(group: BaseExceptionGroup) -> BaseException:
    """The one error inside (nested) task-group groups, or the group itself if there are several."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        error = pending.pop()
        if isinstance(error, BaseExceptionGroup):
            pending.extend(error.exceptions)
        else:
            leaves.append(error)
    return leaves[0] if len(leaves) == 1 else group


async def _exit_code(process: Process) -> int | None:
    with anyio.move_on_after(5):
        return await process.wait()
    return None

