"""No client can hold the query endpoint, through a real ``ctxplane run`` and real sockets.

A client that closes frees its slot at once, even with requests waiting (``wait_ms``); a line that
trickles in is cut off at ``query.request_read_timeout_s``; with every slot taken, ``health`` is
still answered; over TCP with a token, a wrong token closes the connection and is counted.
Nothing here sleeps: each test waits for an answer, an end of stream, or an observable count.
"""

from __future__ import annotations

import json
import socket
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ctxplane.runtime.client import Client
from tests.support.process import CtxplaneProcess, write_config
from tests.support.workload import PINS, context_events, publish

SLOTS = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _endpoint(tmp: Path, metrics: dict[str, Any] | None = None, **query: Any) -> Iterator[str]:
    listen = query.pop("listen", f"unix:{tmp / 'q.sock'}")
    config = write_config(tmp, f"sqlite:///{tmp / 'store.sqlite'}", query={"listen": listen, "max_connections": SLOTS, **query},
                          metrics=metrics or {"listen": None})
    publish(tmp / "eb", list(context_events(1)), partitions=1)
    with CtxplaneProcess(config):
        yield listen


def _raw(listen: str) -> socket.socket:
    if listen.startswith("unix:"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(listen[len("unix:"):])
    else:
        host, _, port = listen[len("tcp://"):].rpartition(":")
        sock = socket.create_connection((host, int(port)))
    sock.settimeout(30)
    return sock


def _lines(sock: socket.socket) -> list[dict[str, Any]]:
    """Every answer line until the server closes the connection."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return [orjson.loads(line) for line in data.splitlines() if line]


def _connections_settle_to_one(listen: str) -> int:
    """The open connections as the worker counts them, asked until only the asking one is left
    (each ask is a round trip on a new connection, which is answered even while every slot is
    taken: the count drops as the server sees the other clients' EOFs)."""
    count = -1
    for _ in range(2000):
        with Client(listen) as client:
            count = int(client.request({"op": "health"})["served_by"]["connections"])
        if count == 1:
            break
    return count


def _waiting_request(wait_ms: int, deadline_ms: int, pins: dict[str, Any]) -> bytes:
    return orjson.dumps({"op": "resolve_flow_binding", "pins": pins, "flow_id": "flow-never", "wait_ms": wait_ms,
                         "deadline_ms": deadline_ms}) + b"\n"


def test_clients_that_close_while_waiting_free_their_slots_at_once(tmp_path: Path) -> None:
    with _endpoint(tmp_path) as listen:
        for _round in range(3):  # 3 × SLOTS waiting clients: only possible if every slot is freed
            socks = [_raw(listen) for _ in range(SLOTS)]
            for sock in socks:
                sock.sendall(_waiting_request(50_000, 55_000, PINS))
            for sock in socks:
                sock.close()
            assert _connections_settle_to_one(listen) == 1
        with Client(listen) as client:
            ready = client.request({"op": "resolve_flow_binding", "pins": PINS, "flow_id": "flow-1", "wait_ms": 20_000,
                                    "deadline_ms": 25_000})
            assert ready["status"] == "READY"


def test_a_client_that_half_closes_still_gets_its_answers_without_the_wait(tmp_path: Path) -> None:
    with _endpoint(tmp_path) as listen:
        sock = _raw(listen)
        sock.sendall(_waiting_request(50_000, 55_000, PINS) + b'{"op": "basis", "request_id": "b"}\n')
        sock.shutdown(socket.SHUT_WR)  # e.g. `socat` or `nc -N` after stdin ends
        miss, basis = _lines(sock)
        assert miss["status"] == "MISSING_BINDING" and basis["request_id"] == "b"


def test_a_request_line_that_trickles_in_is_cut_off(tmp_path: Path) -> None:
    with _endpoint(tmp_path, request_read_timeout_s=0.5) as listen:
        sock = _raw(listen)
        sock.sendall(b'{"op": "hea')  # and nothing more
        (answer,) = _lines(sock)  # the server answers, then closes
        assert answer["code"] == "INVALID_REQUEST" and "query.request_read_timeout_s" in answer["detail"]


def test_with_every_slot_taken_health_is_still_answered(tmp_path: Path) -> None:
    with _endpoint(tmp_path) as listen:
        holders = [_raw(listen) for _ in range(SLOTS)]
        for holder in holders:  # each slot is taken once its connection has been answered
            holder.sendall(b'{"op": "basis"}\n')
            assert orjson.loads(holder.recv(65536).splitlines()[0])["status"] == "OK"
        extra = _raw(listen)
        extra.sendall(b'{"op": "basis"}\n')
        assert _lines(extra)[0]["code"] == "OVERLOADED"
        operator = _raw(listen)
        operator.sendall(b'{"op": "health"}\n')
        (health,) = _lines(operator)
        assert health["status"] == "OK" and health["served_by"]["connections"] == SLOTS
        for holder in holders:
            holder.close()


def test_a_wrong_token_closes_the_connection_and_is_counted(tmp_path: Path) -> None:
    metrics_port = _free_port()
    listen = f"tcp://127.0.0.1:{_free_port()}"
    with _endpoint(tmp_path, listen=listen, auth_token="s3cret-token", request_read_timeout_s=0.5,
                   metrics={"listen": f"127.0.0.1:{metrics_port}"}):
        sock = _raw(listen)
        sock.sendall(b'{"op": "health", "auth": "wrong"}\n{"op": "health", "auth": "s3cret-token"}\n')
        assert [a["code"] for a in _lines(sock)] == ["UNAUTHORIZED"]  # no second try on that connection
        silent = _raw(listen)  # never authenticates: closed after one request read, not the idle timeout
        assert _lines(silent) == []
        with Client(listen, auth_token="s3cret-token") as client:  # forwarded after the failure was shipped
            assert client.request({"op": "health"})["status"] == "OK"
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
        assert "ctxplane_query_auth_failures_total 1.0" in text
        assert "s3cret-token" not in text


@pytest.fixture(scope="module")
def shared_listen(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One process for every hypothesis example."""
    with _endpoint(tmp_path_factory.mktemp("fuzzed-waits")) as listen:
        yield listen


@settings(max_examples=25, deadline=None)
@given(
    wait_ms=st.one_of(st.integers(-5, 70_000), st.sampled_from([10**12, 2**63, -(2**63)]), st.text(max_size=3)),
    deadline_ms=st.one_of(st.integers(-5, 70_000), st.sampled_from([10**12, 2**64]), st.none()),
    pins=st.one_of(st.just(PINS), st.dictionaries(st.text(max_size=5), st.integers(), max_size=3)),
)
def test_fuzzed_waits_never_leave_a_slot_held(shared_listen: str, wait_ms: Any, deadline_ms: Any, pins: Any) -> None:
    listen = shared_listen
    request: dict[str, Any] = {"op": "resolve_flow_binding", "pins": pins, "flow_id": "flow-never", "wait_ms": wait_ms}
    if deadline_ms is not None:
        request["deadline_ms"] = deadline_ms
    socks = [_raw(listen) for _ in range(SLOTS)]
    for sock in socks:
        sock.sendall(json.dumps(request).encode() + b"\n")  # stdlib: it encodes ints beyond 64 bits
        sock.close()
    assert _connections_settle_to_one(listen) == 1
