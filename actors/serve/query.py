"""The query actor: the socket endpoint DF/DL ask, answering from one store snapshot per request.

Its mailbox carries ``Committed`` announcements from the store-writer; they wake ``wait_ms`` waiters
(a request whose answer is not READY yet waits for a commit touching its flow or frame, not for a
poll of the store). Requests arrive over the socket (:class:`runtime.server.LineServer`); each is
bounded by its deadline, and requests beyond ``query.max_pending`` are answered OVERLOADED at once.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from functools import partial
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
import structlog
from anyio.abc import TaskStatus
from anyio.from_thread import BlockingPortal, start_blocking_portal

from ctxplane.actors.tables.reads import basis_program, join_snapshot_program
from ctxplane.config.settings import QuerySettings, StoreSettings
from ctxplane.contracts.join import (
    JOIN_OPS,
    JoinRequest,
    answer_join,
    invalid_join_answer,
    parse_join_request,
)
from ctxplane.contracts.messages import Committed
from ctxplane.contracts.reasons import Reason
from ctxplane.contracts.timestamps import now_utc
from ctxplane.runtime.exceptions import (
    ActorUnavailable,
    AskTimeout,
    CtxplaneError,
    StoreDataError,
    StoreError,
    StoreUnavailable,
)
from ctxplane.runtime.kernel import Actor, ActorContext, ActorRef
from ctxplane.runtime.server import LineServer, error_response
from ctxplane.runtime.store import StoreBackend, open_store

__all__ = ("QueryActor", "QueryServerStopped")

log = structlog.get_logger("ctxplane.query")

def wait_budget_ms(deadline_s: float) -> int:
    """How long a request may wait for commits: its deadline minus headroom to build the answer."""
    return max(0, int(deadline_s * 1000 * 0.9) - 5)


def query_read_timeout_s(settings: QuerySettings) -> float:
    """The bound on one store read of a query (PostgreSQL): half the default deadline, at most 0.5 s.

    A read on a healthy store takes milliseconds; one that has not answered by then is waiting on
    a server that is down or unreachable. Failing it there answers ``UNAVAILABLE /
    STORE_UNAVAILABLE`` (retryable) within the deadline instead of ``DEADLINE_EXCEEDED`` at it,
    and frees the pooled connection for the next request.
    """
    return min(0.5, settings.default_deadline_ms / 2000)


OpHandler = Callable[[dict[str, Any], float], Awaitable[dict[str, Any]]]


class QueryServerStopped(CtxplaneError):
    """Raised by the query actor when its socket server ended while the actor was running (nothing
    a client sends should end it): the actor crashes, so the supervisor restarts the endpoint and
    counts the restart, instead of a live process with no socket. ``__cause__`` is why it ended."""


class _NoteStarted:
    """A task_status that forwards ``started()`` and remembers that it was called."""

    def __init__(self, outer: TaskStatus[None]) -> None:
        self._outer = outer
        self.called = False

    def started(self, value: None = None) -> None:
        self.called = True
        self._outer.started()


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
    ) -> None:
        self._settings = settings
        self._store_settings = store_settings
        self.store: StoreBackend | Any = None  # opened on the query loop
        self._scope = scope
        self._required_roles = required_roles
        self._checkpoint = checkpoint
        self._health = health
        self._features = features
        self._observer = observer
        self._counts: Counter[str] = counts if counts is not None else Counter()
        self._main_token: Any = None
        self._pending: anyio.CapacityLimiter | None = None
        self._waiters: dict[tuple[Any, ...], set[anyio.Event]] = defaultdict(set)
        self._any_commit: set[anyio.Event] = set()
        self._mailbox_scope: anyio.CancelScope | None = None
        self._server_stopped: BaseException | None = None
        self.commits_seen = 0  # Committed announcements delivered to the query loop
        self._ops: dict[str, OpHandler] = {
            "resolve_flow_binding": self._join,
            "fetch_join_frame": self._join,
            "basis": self._basis,
            "health": self._health_op,
        }
        if features is not None:
            self._ops["get_features"] = self._get_features

    async def run(self, ctx: ActorContext, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve the socket on a dedicated event-loop thread, forward commit notifications to it.

        Decision-time queries must not queue behind ingest work: on the main loop they would wait
        for every partition actor's classification chunk and the store-writer's thread. On their
        own loop (own read connections, own waiters) they only share the interpreter, whose switch
        interval the process keeps short.
        """
        self._main_token = anyio.lowlevel.current_token()
        portal_cm = start_blocking_portal(name="ctxplane-query")
        portal = await anyio.to_thread.run_sync(portal_cm.__enter__)
        server_future = None
        try:
            self.store = await anyio.to_thread.run_sync(portal.call, self._open_on_query_loop)
            server = await anyio.to_thread.run_sync(portal.call, self._make_server)
            server_future, _ = await anyio.to_thread.run_sync(portal.start_task, self._serve, server)
            await self.started(ctx)
            task_status.started()
            log.info("query endpoint listening", listen=self._settings.listen)
            with anyio.CancelScope() as self._mailbox_scope:  # cancelled by _server_ended
                while True:
                    message = await ctx.mailbox.get()
                    if ctx.is_stop(message):
                        break
                    payload, reply = ctx.unwrap(message)
                    if type(payload) is Committed:
                        portal.start_task_soon(self._wake, payload)
                    if reply is not None:
                        reply.send({"waiters": sum(len(v) for v in self._waiters.values())})
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._close_query_loop, portal_cm, portal, server_future)
        if self._server_stopped is not None:
            raise QueryServerStopped(
                f"the query server on {self._settings.listen} stopped: {self._server_stopped!r}"
            ) from self._server_stopped
        await self.stopping()

    async def _serve(self, server: LineServer, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run ``server`` on the query loop; if it ever ends after listening, crash the actor.

        A failure to listen (before ``started``) propagates as before: the actor's start fails.
        Cancellation (the actor closing the query loop) is not an end to report.
        """
        status = _NoteStarted(task_status)
        try:
            await server.serve(task_status=status)  # type: ignore[arg-type]
            ended: BaseException = RuntimeError("serve() returned")
        except Exception as exc:  # noqa: BLE001 - any end after listening crashes the actor (below)
            if not status.called:
                raise  # failed to listen: the actor's start fails
            ended = exc
        log.error("query server stopped; crashing the query actor so that it is restarted",
                  listen=self._settings.listen, error=repr(ended), exc_info=ended)
        try:
            await self._in_main(self._server_ended, ended)
        except RuntimeError:
            pass  # the main loop is already gone: the process is ending anyway

    async def _server_ended(self, ended: BaseException) -> None:
        """On the main loop: stop reading the mailbox, so that ``run`` raises QueryServerStopped."""
        self._server_stopped = ended
        if self._mailbox_scope is not None:
            self._mailbox_scope.cancel()

    async def _open_on_query_loop(self) -> StoreBackend:
        self._pending = anyio.CapacityLimiter(self._settings.max_pending)
        return await open_store(self._store_settings, inline_reads=True, read_timeout_s=query_read_timeout_s(self._settings))

    def add_op(self, op: str, handler: OpHandler) -> None:
        """Serve ``op`` with ``handler(request, deadline_s)`` (called on the query loop, under the
        request's deadline and the pending limit, like the built-in ops). Call before ``run``."""
        self._ops[op] = handler

    def _make_server(self) -> LineServer:
        s = self._settings
        return LineServer(s.listen, self.handle, max_line=s.max_request_bytes, max_connections=s.max_connections,
                          idle_timeout_s=s.idle_timeout_s, auth_token=s.auth_token)

    def _close_query_loop(self, portal_cm: Any, portal: BlockingPortal, server_future: Future[Any] | None) -> None:
        if server_future is not None:
            server_future.cancel()
        if self.store is not None:
            portal.call(self.store.aclose)
        portal_cm.__exit__(None, None, None)

    async def _in_main(self, func: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Await ``func(*args)`` on the main loop (actor refs live there) from the query loop."""
        token = self._main_token
        return await anyio.to_thread.run_sync(lambda: anyio.from_thread.run(func, *args, token=token))

    # -- commit notifications ---------------------------------------------------------------

    def _wake(self, committed: Committed) -> None:
        self.commits_seen += 1
        for flow in committed.touched_flows:
            for event in self._waiters.pop(("flow", *flow), ()):
                event.set()
        for frame in committed.touched_frames:
            for event in self._waiters.pop(("frame", *frame), ()):
                event.set()
        if committed.positions:
            for event in self._any_commit:
                event.set()
            self._any_commit.clear()

    async def wait_for_commit(self, since: int) -> None:
        """Return after a commit newer than ``since`` (a ``commits_seen`` value noted before a read)."""
        await self._wait_for([], any_commit=True, since=since)

    async def _wait_for(self, keys: list[tuple[Any, ...]], any_commit: bool, since: int) -> None:
        """Wait for a commit touching ``keys`` (or any commit) — unless one already arrived since
        ``since``: a commit that landed while the caller was reading must not be slept through."""
        if self.commits_seen != since:
            return
        event = anyio.Event()
        for key in keys:
            self._waiters[key].add(event)
        if any_commit:
            self._any_commit.add(event)
        try:
            await event.wait()
        finally:
            for key in keys:
                waiting = self._waiters.get(key)
                if waiting is not None:
                    waiting.discard(event)
                    if not waiting:
                        del self._waiters[key]
            self._any_commit.discard(event)

    # -- requests ---------------------------------------------------------------------------

    async def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        """Answer one request (called by the socket server, one call per request line)."""
        started = anyio.current_time()
        op = request.get("op") or request.get("query_kind")
        request_id = request.get("request_id")
        handler = self._ops.get(op) if isinstance(op, str) else None
        if handler is None:
            known = ", ".join(sorted(self._ops))
            return error_response("INVALID_REQUEST", f"unknown op {op!r}; known ops: {known}", request_id=request_id)
        deadline_ms = request.get("deadline_ms", self._settings.default_deadline_ms)
        if type(deadline_ms) is not int or deadline_ms <= 0:
            return self._failure(op, request, Reason.INVALID_REQUEST, "deadline_ms must be a positive integer", retryable=False)
        # A bounded wait bounds how long one request can hold a slot (query.max_deadline_ms). The
        # operator's `drill` op is exempt: a rewind drill legitimately takes longer, and it is gated.
        cap = self._settings.max_deadline_ms
        wait_ms = request.get("wait_ms", 0)
        for field, value in (("deadline_ms", deadline_ms), ("wait_ms", wait_ms)):
            if type(value) is int and value > cap and op != "drill":
                return self._failure(op, request, Reason.INVALID_REQUEST,
                                     f"{field}: {value} is above the limit {cap} (query.max_deadline_ms)", retryable=False)
        assert self._pending is not None
        try:
            self._pending.acquire_nowait()
        except anyio.WouldBlock:
            return self._failure(op, request, Reason.OVERLOADED, "too many requests in progress", retryable=True)
        try:
            with anyio.move_on_after(deadline_ms / 1000):
                response = await handler(request, deadline_ms / 1000)
                self._observe(op, response, started)
                return response
            response = self._failure(op, request, Reason.DEADLINE_EXCEEDED, f"no answer within {deadline_ms} ms", retryable=True)
        except StoreUnavailable as exc:
            response = self._failure(op, request, Reason.STORE_UNAVAILABLE, str(exc), retryable=True)
        except StoreDataError as exc:
            # The store refused a value of this request (the parsers bound every value that reaches a
            # column, so this is a gap in them): the request's fault, and a retry fails the same way.
            log.warning("the store refused a value of a request", op=op, request_id=request_id, error=str(exc))
            response = self._failure(op, request, Reason.INVALID_REQUEST, "the store refused a value of this request",
                                     retryable=False)
        except StoreError as exc:
            log.error("store error while answering", op=op, error=str(exc))
            response = self._failure(op, request, Reason.STORE_UNAVAILABLE, "store error", retryable=True)
        except Exception as exc:  # noqa: BLE001 - a bug in an op, logged with its traceback and answered
            # A bug reached by one request must not end the endpoint for every client: it is answered
            # as an error for this request only, and logged with its traceback to be fixed.
            log.exception("query handler failed", op=op, request_id=request_id)
            response = self._failure(op, request, Reason.INTERNAL_ERROR, f"internal error ({type(exc).__name__})",
                                     retryable=False)
        finally:
            self._pending.release()
        self._observe(op, response, started)
        return response

    def _observe(self, op: str, response: dict[str, Any], started: float) -> None:
        status = response.get("status")
        if status in ("MISSING_BINDING", "MISSING_JOIN_FRAME"):
            self._counts["join_misses"] += 1
        elif op == "get_features":
            if status == "OK":
                fresh = response["snapshot"]["freshness"]
                if fresh["missing_groups"] or fresh["missing_feature_keys"]:
                    self._counts["missing_features"] += 1
            elif response.get("code") in ("UNAVAILABLE", "MISSING_PROVENANCE"):
                self._counts["snapshot_failures"] += 1
        if self._observer is not None:
            self._observer.on_query(op, response.get("status", "?"), anyio.current_time() - started)

    def _failure(self, op: str, request: dict[str, Any], reason: Reason, detail: str, *, retryable: bool) -> dict[str, Any]:
        request_id = request.get("request_id")
        if op in JOIN_OPS:
            status = "INVALID_REQUEST" if reason is Reason.INVALID_REQUEST else "UNAVAILABLE"
            return {"request_id": request_id, "status": status, "reason_codes": [reason.value], "detail": detail,
                    "retryable": retryable, "pins": request.get("pins"), "resolved_at_utc": now_utc()}
        code = {Reason.INVALID_REQUEST: "INVALID_REQUEST"}.get(reason, "UNAVAILABLE")
        return {**error_response(code, detail, request_id=request_id, retryable=retryable), "reason": reason.value}

    async def _lag(self) -> dict[str, Any] | None:
        try:
            snap = await self._in_main(partial(self._checkpoint.ask, timeout=0.2), "positions")
        except (AskTimeout, ActorUnavailable):
            return None
        parts = [p for p in snap["partitions"] if p["plane"] == "join"]  # type: ignore[index]
        lags = [p["lag"] for p in parts if p["lag"] is not None]
        return {"partitions": len(parts), "total_lag": sum(lags) if lags else None}

    async def _join(self, request: dict[str, Any], deadline_s: float) -> dict[str, Any]:
        parsed = parse_join_request(request, max_wait_ms=wait_budget_ms(deadline_s))
        if not isinstance(parsed, JoinRequest):
            detail, request_id = parsed
            return invalid_join_answer(detail, request, request_id, resolved_at=now_utc())
        until = anyio.current_time() + parsed.wait_ms / 1000
        while True:
            seen = self.commits_seen
            snap = await self.store.read(join_snapshot_program(parsed, scope=self._scope))
            answer = answer_join(parsed, snap, resolved_at=now_utc(), required_roles=self._required_roles)
            status_ready = answer["status"] not in ("MISSING_BINDING", "MISSING_JOIN_FRAME")
            remaining = until - anyio.current_time()
            if status_ready or remaining <= 0:
                if not status_ready:
                    answer["lag"] = await self._lag()
                return answer
            keys: list[tuple[Any, ...]] = []
            if parsed.flow_id is not None:
                keys.append(("flow", parsed.pins["platform_run_id"], parsed.pins["scenario_run_id"], parsed.flow_id))
            key = answer.get("join_frame_key")
            if key is not None:
                keys.append(("frame", key["platform_run_id"], key["scenario_run_id"], key["merchant_id"], key["arrival_seq"]))
            with anyio.move_on_after(remaining):
                await self._wait_for(keys, any_commit=False, since=seen)

    async def _basis(self, request: dict[str, Any], deadline_s: float) -> dict[str, Any]:
        plane = request.get("plane")
        if plane not in (None, "join", "features"):
            return error_response("INVALID_REQUEST", "plane must be join or features", request_id=request.get("request_id"))
        planes = (plane,) if plane else ("join", "features")
        bases = await self.store.read(basis_program(self._scope, planes))
        return {"status": "OK", "request_id": request.get("request_id"), "served_at_utc": now_utc(), "planes": bases}

    async def _health_op(self, request: dict[str, Any], deadline_s: float) -> dict[str, Any]:
        try:
            report = await self._in_main(partial(self._health.ask, timeout=max(0.05, deadline_s * 0.8)), "report")
        except (AskTimeout, ActorUnavailable) as exc:
            return {"status": "OK", "request_id": request.get("request_id"), "health": {"state": "RED", "reasons": ["HEALTH_UNAVAILABLE"], "detail": str(exc)}}
        return {"status": "OK", "request_id": request.get("request_id"), "health": report}

    async def _get_features(self, request: dict[str, Any], deadline_s: float) -> dict[str, Any]:
        return await self._features.answer(self, request, deadline_s)  # type: ignore[no-any-return]
