"""The query actor's endpoint survives its own failures (issue 15, item 1), in-process under a supervisor.

A handler that raises is answered as an error for that request only; a socket server that dies
anyway crashes the actor, so the supervisor restarts it (and counts it) instead of leaving a live
process without a socket.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from anyio.abc import ByteStream

from ctxplane.actors.serve.query import QueryActor, QueryServerStopped
from ctxplane.config.settings import QuerySettings, StoreSettings
from ctxplane.runtime.client import AsyncClient
from ctxplane.runtime.exceptions import StoreDataError
from ctxplane.runtime.kernel import ChildSpec
from ctxplane.runtime.server import LineServer
from tests.runtime import kit, make_supervisor, running


class _BrokenConnections(LineServer):
    """A server whose connection handler fails outside every per-request guard (as an accept or
    transport bug would): ``serve`` itself ends with the error."""

    async def _connection(self, stream: ByteStream) -> None:
        raise RuntimeError("listener broken")


class _Query(QueryActor):
    def __init__(self, listen: str, tmp: Path, *, broken: bool, registry: Any) -> None:
        super().__init__(QuerySettings(listen=listen), store_settings=StoreSettings(dsn=f"sqlite:///{tmp / 's.sqlite'}"),
                         scope="*", required_roles=("arrival_event",), checkpoint=registry.ref("checkpoint"),
                         health=registry.ref("health"))
        self._broken = broken
        self.add_op("boom", self._boom)
        self.add_op("refused", self._refused)

    def _make_server(self) -> LineServer:
        if not self._broken:
            return super()._make_server()
        return _BrokenConnections(self._settings.listen, self.handle)

    async def _boom(self, request: dict[str, Any], deadline_s: float) -> dict[str, Any]:
        raise OverflowError("Python int too large to convert to SQLite INTEGER")

    async def _refused(self, request: dict[str, Any], deadline_s: float) -> dict[str, Any]:
        raise StoreDataError("postgresql store refused a value (transaction): DataError: out of int64 range")


def _spec(listen: str, tmp: Path, registry: Any, incarnations: list[int]) -> ChildSpec:
    def factory() -> QueryActor:
        incarnations.append(1)
        return _Query(listen, tmp, broken=len(incarnations) == 1, registry=registry)

    return ChildSpec("query", factory, mailbox_capacity=16)


async def test_a_server_that_dies_crashes_the_actor_and_the_supervisor_restarts_the_endpoint(tmp_path: Path) -> None:
    listen = f"unix:{tmp_path / 'q.sock'}"
    registry, recorder, _log = kit()
    incarnations: list[int] = []
    sup = make_supervisor([_spec(listen, tmp_path, registry, incarnations)], registry=registry, recorder=recorder)
    async with running(sup):
        await recorder.wait_running("query")
        async with AsyncClient(listen) as client:  # the first incarnation's server dies on this connection
            await client.send_raw(b'{"op": "health"}\n')
        await recorder.wait_running("query", times=2)
        assert [(child, type(reason)) for _sup, child, reason, _delay in recorder.restarts] == [("query", QueryServerStopped)]
        async with AsyncClient(listen) as client:
            assert (await client.request({"op": "nope"}))["code"] == "INVALID_REQUEST"


async def test_a_handler_that_raises_is_an_error_for_that_request_only(tmp_path: Path) -> None:
    listen = f"unix:{tmp_path / 'q.sock'}"
    registry, recorder, _log = kit()
    incarnations = [1]  # skip the broken first incarnation
    sup = make_supervisor([_spec(listen, tmp_path, registry, incarnations)], registry=registry, recorder=recorder)
    async with running(sup):
        await recorder.wait_running("query")
        async with AsyncClient(listen) as client:
            boom, refused, after = await client.request_many(
                [{"op": "boom", "request_id": "b"}, {"op": "refused"}, {"op": "nope"}])
        assert (boom["code"], boom["reason"], boom["retryable"], boom["request_id"]) == ("UNAVAILABLE", "INTERNAL_ERROR", False, "b")
        assert (refused["code"], refused["retryable"]) == ("INVALID_REQUEST", False)
        assert after["code"] == "INVALID_REQUEST" and "unknown op" in after["detail"]
        assert recorder.restarts == []
