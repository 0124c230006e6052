"""The line-JSON server: framing, limits and isolation (in-process, with a trivial handler)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from ctxplane.runtime.client import AsyncClient, QueryEndpointUnavailable
from ctxplane.runtime.exceptions import UsageError
from ctxplane.runtime.server import LineServer


async def _echo(request: dict[str, Any]) -> dict[str, Any]:
    if request.get("sleep"):
        await anyio.sleep(request["sleep"])  # sync-ok: simulates a slow answer, not synchronisation
    return {"status": "OK", "echo": request}


async def test_framing_errors_never_break_the_connection(tmp_path: Path) -> None:
    listen = f"unix:{tmp_path / 's.sock'}"
    server = LineServer(listen, _echo, max_line=1024)
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve)
        async with AsyncClient(listen) as client:
            await client.send_raw(b"{not json\n[1,2]\n" + b"x" * 5000 + b"\n" + b'{"a": 1}\n')
            answers = [await client.receive() for _ in range(4)]
            assert [a.get("code") for a in answers[:3]] == ["INVALID_REQUEST"] * 3
            assert "exceeds 1024" in answers[2]["detail"]
            assert answers[3] == {"status": "OK", "echo": {"a": 1}}
            # An oversized line that arrives in pieces is answered once and skipped.
            await client.send_raw(b"y" * 3000)
            await client.send_raw(b"y" * 3000 + b'\n{"b": 2}\n')
            assert (await client.receive())["code"] == "INVALID_REQUEST"
            assert (await client.receive())["echo"] == {"b": 2}
        tg.cancel_scope.cancel()
    assert not (tmp_path / "s.sock").exists()


async def test_pipelined_requests_are_answered_in_order(tmp_path: Path) -> None:
    listen = f"unix:{tmp_path / 's.sock'}"
    server = LineServer(listen, _echo)
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve)
        async with AsyncClient(listen) as client:
            requests = [{"i": i, "sleep": 0.01 if i % 3 == 0 else 0} for i in range(30)]
            answers = await client.request_many(requests)
            assert [a["echo"]["i"] for a in answers] == list(range(30))
        tg.cancel_scope.cancel()


async def test_many_concurrent_clients(tmp_path: Path) -> None:
    listen = f"unix:{tmp_path / 's.sock'}"
    server = LineServer(listen, _echo)
    results: list[int] = []
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve)

        async def one(i: int) -> None:
            async with AsyncClient(listen) as client:
                for j in range(20):
                    answer = await client.request({"i": i, "j": j})
                    assert answer["echo"] == {"i": i, "j": j}
                results.append(i)

        async with anyio.create_task_group() as clients:
            for i in range(50):
                clients.start_soon(one, i)
        tg.cancel_scope.cancel()
    assert sorted(results) == list(range(50))


async def test_connection_limit_and_auth(tmp_path: Path) -> None:
    listen = f"unix:{tmp_path / 's.sock'}"
    server = LineServer(listen, _echo, max_connections=1, auth_token="t0ken")
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve)
        async with AsyncClient(listen, auth_token="t0ken") as first:
            assert (await first.request({"x": 1}))["echo"] == {"x": 1}  # auth is stripped before the handler
            async with AsyncClient(listen, auth_token="t0ken") as second:
                assert (await second.request({"x": 2}))["code"] == "OVERLOADED"
            # Beyond the limit, a few reserved connections may still ask for health (then close).
            async with AsyncClient(listen, auth_token="t0ken") as operator:
                assert (await operator.request({"op": "health"}))["echo"] == {"op": "health"}
        async with AsyncClient(listen) as no_auth:
            assert (await no_auth.request({"x": 1}))["code"] == "UNAUTHORIZED"
        async with AsyncClient(listen, auth_token="wrong") as wrong:
            assert (await wrong.request({"x": 1}))["code"] == "UNAUTHORIZED"
            with pytest.raises(QueryEndpointUnavailable, match="closed"):  # no second try on that connection
                await wrong.request({"x": 1})
        assert server.auth_failures == 2
        tg.cancel_scope.cancel()


async def test_socket_file_is_private_and_a_live_socket_is_not_stolen(tmp_path: Path) -> None:
    listen = f"unix:{tmp_path / 's.sock'}"
    async with anyio.create_task_group() as tg:
        await tg.start(LineServer(listen, _echo).serve)
        assert (tmp_path / "s.sock").stat().st_mode & 0o777 == 0o600
        with pytest.raises(UsageError, match="in use"):
            await LineServer(listen, _echo).serve()
        tg.cancel_scope.cancel()


def test_non_loopback_tcp_requires_a_token() -> None:
    with pytest.raises(UsageError, match="auth_token"):
        LineServer("tcp://0.0.0.0:7461", _echo)
    LineServer("tcp://0.0.0.0:7461", _echo, auth_token="x")
    LineServer("tcp://127.0.0.1:7461", _echo)


async def test_client_reports_an_unreachable_endpoint(tmp_path: Path) -> None:
    with pytest.raises(QueryEndpointUnavailable, match="cannot reach"):
        await AsyncClient(f"unix:{tmp_path / 'nothing.sock'}").connect()


async def test_idle_connections_are_closed(tmp_path: Path) -> None:
    listen = f"unix:{tmp_path / 's.sock'}"
    async with anyio.create_task_group() as tg:
        await tg.start(LineServer(listen, _echo, idle_timeout_s=0.05).serve)
        async with AsyncClient(listen) as client:
            with pytest.raises(QueryEndpointUnavailable, match="closed"):
                await client.receive()
        tg.cancel_scope.cancel()


async def _raising(request: dict[str, Any]) -> dict[str, Any]:
    if request.get("raise"):
        raise OverflowError("Python int too large to convert to SQLite INTEGER")
    if request.get("unencodable"):
        return {"status": "OK", "n": 2**70}
    return {"status": "OK", "echo": request}


async def test_a_handler_that_raises_is_answered_for_that_request_only(tmp_path: Path) -> None:
    # Issue 15: an OverflowError escaping a handler ended serve() — the socket file vanished, silently.
    listen = f"unix:{tmp_path / 's.sock'}"
    async with anyio.create_task_group() as tg:
        await tg.start(LineServer(listen, _raising).serve)
        async with AsyncClient(listen) as client, AsyncClient(listen) as other:
            answers = await client.request_many([{"raise": True, "request_id": "r"}, {"unencodable": True}, {"a": 1}])
            assert [(a.get("code"), a.get("request_id")) for a in answers[:2]] == [("INTERNAL_ERROR", "r"), ("INTERNAL_ERROR", None)]
            assert answers[2]["echo"] == {"a": 1}  # the same connection carries on
            assert (await other.request({"b": 2}))["echo"] == {"b": 2}
        assert (tmp_path / "s.sock").exists()
        tg.cancel_scope.cancel()
