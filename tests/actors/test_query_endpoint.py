"""The query actor and its worker processes, in-process under a supervisor (real worker processes).

A forwarded op that raises is an error for that request only; a worker killed with ``kill -9`` is
restarted (and counted) without restarting the actor; too many worker deaths crash the actor so its
supervisor takes over; with two workers, both accept on the one socket.
"""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from ctxplane.actors.serve.query import QueryActor, QueryWorkersFailing
from ctxplane.config.settings import QuerySettings, StoreSettings
from ctxplane.runtime.client import AsyncClient
from ctxplane.runtime.exceptions import StoreDataError
from ctxplane.runtime.kernel import ActorState, Backoff, ChildSpec, Intensity
from tests.runtime import Recorder, kit, make_supervisor, running

# Worker processes start in well under a second; the guard only stops a hung test.
START_GUARD_S = 60.0
FAST_RESTART = Backoff(initial=0.001, maximum=0.002, jitter=0.0)


async def _boom(request: dict[str, Any], deadline_s: float) -> dict[str, Any]:
    raise OverflowError("Python int too large to convert to SQLite INTEGER")


async def _refused(request: dict[str, Any], deadline_s: float) -> dict[str, Any]:
    raise StoreDataError("postgresql store refused a value (transaction): DataError: out of int64 range")


class _Observer(Recorder):
    """Kernel events plus what the metrics module is told of each answer."""

    def __init__(self) -> None:
        super().__init__()
        self.queries: list[tuple[str, str]] = []

    def on_query(self, op: str, status: str, seconds: float) -> None:
        self.queries.append((op, status))
        self._poke()


@asynccontextmanager
async def _endpoint(tmp: Path, *, workers: int = 1, intensity: Intensity | None = None
                    ) -> AsyncIterator[tuple[str, _Observer]]:
    listen = f"unix:{tmp / 'q.sock'}"
    registry, _recorder, _log = kit()
    recorder = _Observer()

    def factory() -> QueryActor:
        actor = QueryActor(
            QuerySettings(listen=listen, workers=workers), store_settings=StoreSettings(dsn=f"sqlite:///{tmp / 's.sqlite'}"),
            scope="*", required_roles=("arrival_event",), checkpoint=registry.ref("checkpoint"),
            health=registry.ref("health"), observer=recorder, backoff=FAST_RESTART,
            restart_intensity=intensity or Intensity(max_restarts=100, period=60.0),
        )
        actor.add_op("boom", _boom)
        actor.add_op("refused", _refused)
        return actor

    sup = make_supervisor([ChildSpec("query", factory, mailbox_capacity=16)], registry=registry, recorder=recorder)
    async with running(sup):
        await recorder.wait_for(lambda: recorder.count("query", ActorState.RUNNING) >= 1, guard=START_GUARD_S)
        yield listen, recorder


async def _served_by(listen: str) -> int:
    async with AsyncClient(listen, timeout_s=START_GUARD_S) as client:
        answer = await client.request({"op": "health"})
    return int(answer["served_by"]["pid"])


async def _wait(recorder: Recorder, predicate: Any) -> None:
    await recorder.wait_for(predicate, guard=START_GUARD_S)


async def test_a_forwarded_op_that_raises_is_an_error_for_that_request_only(tmp_path: Path) -> None:
    async with _endpoint(tmp_path) as (listen, recorder), AsyncClient(listen) as client:
        boom, refused, after = await client.request_many(
            [{"op": "boom", "request_id": "b"}, {"op": "refused"}, {"op": "nope"}])
        assert (boom["code"], boom["reason"], boom["retryable"], boom["request_id"]) == ("UNAVAILABLE", "INTERNAL_ERROR", False, "b")
        assert (refused["code"], refused["retryable"]) == ("INVALID_REQUEST", False)
        assert after["code"] == "INVALID_REQUEST" and "unknown op" in after["detail"]
        assert "boom" in after["detail"] and "health" in after["detail"]
        # Each answer's latency reaches this process (for /metrics), shipped by the worker.
        await recorder.wait_for(lambda: len(recorder.queries) >= 2, guard=START_GUARD_S)
        assert recorder.queries[:2] == [("boom", "ERROR"), ("refused", "ERROR")]
        assert recorder.restarts == []


async def test_a_killed_worker_is_restarted_and_counted_and_the_actor_is_untouched(tmp_path: Path) -> None:
    async with _endpoint(tmp_path) as (listen, recorder):
        first = await _served_by(listen)
        os.kill(first, signal.SIGKILL)
        await _wait(recorder, lambda: any(child == "query-worker-0" for _s, child, _r, _d in recorder.restarts))
        second = await _served_by(listen)  # a new connection is answered by the new worker
        assert second != first
        assert [(s, c) for s, c, _r, _d in recorder.restarts] == [("query", "query-worker-0")]
        assert recorder.count("query", ActorState.RUNNING) == 1  # the actor (and its socket) lived on


async def test_workers_dying_beyond_the_intensity_crash_the_actor_for_its_supervisor(tmp_path: Path) -> None:
    async with _endpoint(tmp_path, intensity=Intensity(max_restarts=1, period=3600.0)) as (listen, recorder):
        os.kill(await _served_by(listen), signal.SIGKILL)
        await _wait(recorder, lambda: len(recorder.restarts) == 1)
        os.kill(await _served_by(listen), signal.SIGKILL)
        await _wait(recorder, lambda: recorder.count("query", ActorState.RUNNING) >= 2)
        crash = [reason for _s, child, reason, _d in recorder.restarts if child == "query"]
        assert len(crash) == 1 and isinstance(crash[0], QueryWorkersFailing)
        await _served_by(listen)  # the restarted actor serves again


async def test_two_workers_both_accept_on_the_one_socket(tmp_path: Path) -> None:
    async with _endpoint(tmp_path, workers=2) as (listen, _recorder):
        pids: set[int] = set()
        clients: list[AsyncClient] = []
        try:
            # Each connection is accepted by whichever worker is first; kept open, so that the
            # kernel's choice is never the same process twice by reuse. Two idle workers race
            # for every connection: 200 in a row to one of them does not happen.
            while len(pids) < 2 and len(clients) < 200:
                client = await AsyncClient(listen).connect()
                clients.append(client)
                pids.add(int((await client.request({"op": "health"}))["served_by"]["pid"]))
        finally:
            for client in clients:
                await client.aclose()
        assert len(pids) == 2
