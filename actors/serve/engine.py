"""The query engine: answers one request from one store snapshot, inside a query worker process.

Each request is bounded by its deadline; requests beyond ``query.max_pending`` are answered
OVERLOADED at once. A request whose answer is not READY yet (``wait_ms``) waits for a commit touching
its flow or frame — announced by the store-writer and relayed to the worker (:meth:`wake`), never a
poll of the store. Ops that need the supervisor's actors (``health``, ``drill``, the lag of a miss)
are forwarded to the parent process through ``forward``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import anyio
import structlog

from ctxplane.actors.tables.reads import basis_program, join_snapshot_program
from ctxplane.config.settings import QuerySettings
from ctxplane.contracts.answers import JOIN_MISSES, RETRYABLE_FEATURE_CODES, ErrorCode, Status
from ctxplane.contracts.join import (
    JOIN_OPS,
    JoinRequest,
    answer_join,
    invalid_join_answer,
    parse_join_request,
)
from ctxplane.contracts.reasons import Reason
from ctxplane.contracts.timestamps import now_utc
from ctxplane.runtime.exceptions import StoreDataError, StoreError, StoreUnavailable
from ctxplane.runtime.server import current_peer, error_response, peer_gone
from ctxplane.runtime.store import StoreBackend

__all__ = ("OpHandler", "QueryEngine", "count_of", "wait_budget_ms")

log = structlog.get_logger("ctxplane.query")

OpHandler = Callable[[dict[str, Any], float], Awaitable[dict[str, Any]]]
# forward(op, request, deadline_s): the parent's answer to an op it serves (health, drill, lag).
Forward = Callable[[str, dict[str, Any], float], Awaitable[Any]]
# observe(op, status, seconds, count): one answered request; ``count`` names a health counter or None.
Observe = Callable[[str, str, float, str | None], None]


def wait_budget_ms(deadline_s: float) -> int:
    """How long a request may wait for commits: its deadline minus headroom to build the answer."""
    return max(0, int(deadline_s * 1000 * 0.9) - 5)


def count_of(op: str, response: dict[str, Any]) -> str | None:
    """The health counter an answer adds to (join misses, missing features, snapshot failures)."""
    status = response.get("status")
    if status in JOIN_MISSES:
        return "join_misses"
    if op == "get_features":
        if status == Status.OK:
            fresh = response["snapshot"]["freshness"]
            if fresh["missing_groups"] or fresh["missing_feature_keys"]:
                return "missing_features"
        elif response.get("code") in RETRYABLE_FEATURE_CODES:
            return "snapshot_failures"
    return None


class QueryEngine:
    """The ops of the socket protocol over one store (one per worker process)."""

    def __init__(
        self,
        settings: QuerySettings,
        *,
        store: StoreBackend,
        scope: str,
        required_roles: tuple[str, ...],
        features: Any = None,
        forward: Forward,
        forwarded_ops: Iterable[str] = (),
        observe: Observe | None = None,
        served_by: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self._settings = settings
        self.store = store
        self._scope = scope
        self._required_roles = required_roles
        self._features = features
        self._forward = forward
        self._observe_cb = observe
        self._served_by = served_by  # added to health answers: which worker process answered
        self._pending = anyio.CapacityLimiter(settings.max_pending)
        self._waiters: dict[tuple[Any, ...], set[anyio.Event]] = defaultdict(set)
        self._any_commit: set[anyio.Event] = set()
        self.commits_seen = 0  # commit announcements received
        self._ops: dict[str, OpHandler] = {
            "resolve_flow_binding": self._join,
            "fetch_join_frame": self._join,
            "basis": self._basis,
            "health": self._health,
        }
        if features is not None:
            self._ops["get_features"] = self._get_features
        for op in forwarded_ops:
            self._ops[op] = self._forwarded(op)

    # -- commit notifications ---------------------------------------------------------------

    def wake(self, flows: Iterable[Iterable[Any]], frames: Iterable[Iterable[Any]], *, positions: bool,
             everyone: bool = False) -> None:
        """A commit landed: wake the waiters of the flows and frames it touched (``everyone``: all
        waiters, when the announcements were coalesced and which keys they touched is unknown)."""
        self.commits_seen += 1
        if everyone:
            keys: Iterable[tuple[Any, ...]] = list(self._waiters)
        else:
            keys = [("flow", *flow) for flow in flows] + [("frame", *frame) for frame in frames]
        for key in keys:
            for event in self._waiters.pop(key, ()):
                event.set()
        if positions or everyone:
            for event in self._any_commit:
                event.set()
            self._any_commit.clear()

    @property
    def waiting(self) -> int:
        return sum(len(v) for v in self._waiters.values()) + len(self._any_commit)

    async def wait_for_commit(self, since: int) -> None:
        """Return after a commit newer than ``since`` (a ``commits_seen`` value noted before a read)."""
        await self._wait_for([], any_commit=True, since=since)

    async def _wait_for(self, keys: list[tuple[Any, ...]], any_commit: bool, since: int) -> None:
        """Wait for a commit touching ``keys`` (or any commit) — unless one already arrived since
        ``since``: a commit that landed while the caller was reading must not be slept through."""
        peer = current_peer()
        if self.commits_seen != since or (peer is not None and peer.gone):
            return
        event = anyio.Event()
        for key in keys:
            self._waiters[key].add(event)
        if any_commit:
            self._any_commit.add(event)
        if peer is not None:
            peer.wake_when_gone(event)  # a client that closed its side is answered at once
        try:
            await event.wait()
        finally:
            if peer is not None:
                peer.forget(event)
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
        if not isinstance(op, str) or (handler := self._ops.get(op)) is None:
            known = ", ".join(sorted(self._ops))
            return error_response(ErrorCode.INVALID_REQUEST, f"unknown op {op!r}; known ops: {known}", request_id=request_id)
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
        if self._observe_cb is not None:
            self._observe_cb(op, response.get("status", "?"), anyio.current_time() - started, count_of(op, response))

    def _failure(self, op: str, request: dict[str, Any], reason: Reason, detail: str, *, retryable: bool) -> dict[str, Any]:
        request_id = request.get("request_id")
        if op in JOIN_OPS:
            status = Status.INVALID_REQUEST if reason is Reason.INVALID_REQUEST else Status.UNAVAILABLE
            return {"request_id": request_id, "status": status, "reason_codes": [reason.value], "code": reason.value,
                    "detail": detail, "retryable": retryable, "pins": request.get("pins"), "resolved_at_utc": now_utc()}
        code = ErrorCode.INVALID_REQUEST if reason is Reason.INVALID_REQUEST else ErrorCode.UNAVAILABLE
        return {**error_response(code, detail, request_id=request_id, retryable=retryable), "reason": reason.value}

    def _forwarded(self, op: str) -> OpHandler:
        async def handler(request: dict[str, Any], deadline_s: float) -> dict[str, Any]:
            return await self._forward(op, request, deadline_s)  # type: ignore[no-any-return]

        return handler

    async def _health(self, request: dict[str, Any], deadline_s: float) -> dict[str, Any]:
        answer: dict[str, Any] = await self._forward("health", request, deadline_s)
        if self._served_by is not None:
            answer["served_by"] = self._served_by()
        return answer

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
            status_ready = answer["status"] not in JOIN_MISSES
            remaining = until - anyio.current_time()
            if status_ready or remaining <= 0 or peer_gone():
                if not status_ready:
                    answer["lag"] = await self._forward("lag", {}, 0.2)
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
            return error_response(ErrorCode.INVALID_REQUEST, "plane must be join or features", request_id=request.get("request_id"))
        planes = (plane,) if plane else ("join", "features")
        bases = await self.store.read(basis_program(self._scope, planes))
        return {"status": Status.OK, "request_id": request.get("request_id"), "served_at_utc": now_utc(), "planes": bases}

    async def _get_features(self, request: dict[str, Any], deadline_s: float) -> dict[str, Any]:
        return await self._features.answer(self, request, deadline_s)  # type: ignore[no-any-return]
