"""The clients' typed calls against a scripted endpoint: retries only for answers marked retryable,
one deadline per call carried by every attempt, one connection reused (and reopened when the server
closed it), error answers raised as QueryError. Both the blocking and the async client."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

from ctxplane.runtime.client import AsyncClient, Client, Pins, QueryEndpointUnavailable, QueryError, QueryTimeout
from tests.support.workload import PINS

Script = Callable[[dict[str, Any], int], dict[str, Any] | str | None]  # answer, "close", or None: never answer
OK = {"status": "READY", "reason_codes": ["READY"]}
OVERLOADED = {"status": "ERROR", "code": "OVERLOADED", "retryable": True, "detail": "too many requests in progress"}
INVALID = {"status": "INVALID_REQUEST", "reason_codes": ["INVALID_REQUEST"], "code": "INVALID_REQUEST", "retryable": False,
           "detail": "pins.seed is required"}


class FakeEndpoint:
    """An NDJSON endpoint on a Unix socket whose answers a script decides; it records every request
    with the index of the connection it came on."""

    def __init__(self, path: Path, script: Script) -> None:
        self.listen = f"unix:{path}"
        self.script = script
        self.requests: list[tuple[int, dict[str, Any]]] = []
        self.connections = 0
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(path))
        self._server.listen()
        self._threads: list[threading.Thread] = []
        self._closing = threading.Event()
        self._accept = threading.Thread(target=self._accept_loop, daemon=True)
        self._accept.start()

    def _accept_loop(self) -> None:
        while not self._closing.is_set():
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            self.connections += 1
            thread = threading.Thread(target=self._serve, args=(conn, self.connections), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, conn: socket.socket, index: int) -> None:
        with conn, conn.makefile("rb") as lines:
            for line in lines:
                request = orjson.loads(line)
                self.requests.append((index, request))
                answer = self.script(request, len(self.requests))
                if answer == "close":
                    return
                if answer is None:
                    self._closing.wait()  # hold the request unanswered until the test ends
                    return
                assert isinstance(answer, dict)
                conn.sendall(orjson.dumps({**answer, "request_id": request.get("request_id")}) + b"\n")

    def close(self) -> None:
        self._closing.set()
        self._server.close()
        for thread in self._threads:
            thread.join(5)


@pytest.fixture
def endpoint(tmp_path: Path) -> Iterator[Callable[[Script], FakeEndpoint]]:
    made: list[FakeEndpoint] = []

    def make(script: Script) -> FakeEndpoint:
        made.append(FakeEndpoint(tmp_path / f"e{len(made)}.sock", script))
        return made[-1]

    yield make
    for fake in made:
        fake.close()


def _both(fake: FakeEndpoint, call: Callable[[Any], Any], **options: Any) -> list[Any]:
    """Run ``call(client)`` with a blocking and an async client (one each); return both outcomes."""
    outcomes: list[Any] = []
    with Client(fake.listen, pins=PINS, **options) as client:
        try:
            outcomes.append(call(client))
        except Exception as exc:  # noqa: BLE001 - the outcome is what is compared
            outcomes.append(exc)

    async def run_async() -> None:
        async with AsyncClient(fake.listen, pins=PINS, **options) as client:
            try:
                outcomes.append(await call(client))  # the same lambda returns a coroutine here
            except Exception as exc:  # noqa: BLE001
                outcomes.append(exc)

    anyio.run(run_async)
    return outcomes


def test_retryable_answers_are_retried_within_the_deadline_and_the_answer_returned(endpoint: Any) -> None:
    # Per client: two OVERLOADED answers, then READY.
    fake = endpoint(lambda request, n: OVERLOADED if n % 3 != 0 else OK)
    outcomes = _both(fake, lambda c: c.resolve_flow_binding("flow-7", wait_ms=50), deadline_ms=10_000)
    assert [o["status"] for o in outcomes] == ["READY", "READY"]
    assert len(fake.requests) == 6
    deadlines = [r["deadline_ms"] for _, r in fake.requests]
    # Every attempt carries the time left of the one 10 s deadline, never more.
    assert all(d <= 10_000 for d in deadlines) and deadlines[0] >= deadlines[1] >= deadlines[2]
    assert {(r["op"], r["flow_id"], r["wait_ms"]) for _, r in fake.requests} == {("resolve_flow_binding", "flow-7", 50)}
    assert all(r["pins"] == PINS for _, r in fake.requests)


def test_an_answer_that_is_not_retryable_is_raised_at_once(endpoint: Any) -> None:
    fake = endpoint(lambda request, n: INVALID)
    outcomes = _both(fake, lambda c: c.get_features([("flow_id", "f")], [("core_features", "v1")], "2026-02-07T06:00:00+01:00"))
    for error in outcomes:
        assert isinstance(error, QueryError)
        assert (error.code, error.retryable, error.detail, error.attempts) == ("INVALID_REQUEST", False, INVALID["detail"], 1)
    assert len(fake.requests) == 2  # one per client: no retry
    request = fake.requests[0][1]
    assert request["as_of_time_utc"] == "2026-02-07T05:00:00.000000Z"  # sent in the canonical form
    assert request["feature_keys"] == [{"key_type": "flow_id", "key_id": "f"}]
    assert request["feature_groups"] == [{"name": "core_features", "version": "v1"}]


def test_retries_stop_at_max_attempts_and_raise_the_last_error(endpoint: Any) -> None:
    fake = endpoint(lambda request, n: OVERLOADED)
    outcomes = _both(fake, lambda c: c.health(), deadline_ms=10_000, max_attempts=3)
    for error in outcomes:
        assert isinstance(error, QueryError) and (error.code, error.retryable, error.attempts) == ("OVERLOADED", True, 3)
    assert len(fake.requests) == 6


def test_missing_and_conflict_answers_are_answers_not_errors(endpoint: Any) -> None:
    missing = {"status": "MISSING_BINDING", "reason_codes": ["FLOW_BINDING_NOT_FOUND"]}
    fake = endpoint(lambda request, n: missing)
    assert [o["status"] for o in _both(fake, lambda c: c.resolve_flow_binding("nope"))] == ["MISSING_BINDING"] * 2
    assert len(fake.requests) == 2


def test_one_connection_is_reused_and_reopened_when_the_server_closed_it(endpoint: Any) -> None:
    fake = endpoint(lambda request, n: OK)
    with Client(fake.listen, pins=Pins.from_mapping(PINS)) as client:
        for n in range(5):
            client.fetch_join_frame({"merchant_id": "m-1", "arrival_seq": n})
    assert fake.connections == 1 and [i for i, _ in fake.requests] == [1] * 5
    assert fake.requests[2][1]["join_frame_key"] == {"merchant_id": "m-1", "arrival_seq": 2}



def _close_after_one(fake: list[FakeEndpoint]) -> Script:
    """Answer each connection's first request, then close it (as the server's idle timeout would)."""
    seen: set[int] = set()

    def script(request: dict[str, Any], n: int) -> dict[str, Any] | str:
        index = fake[0].requests[-1][0]
        if index in seen:
            return "close"
        seen.add(index)
        return OK

    return script


def test_a_connection_the_server_closed_is_reopened_and_the_request_resent(endpoint: Any) -> None:
    holder: list[FakeEndpoint] = []
    holder.append(endpoint(_close_after_one(holder)))
    with Client(holder[0].listen, pins=PINS) as client:
        assert [client.basis("join")["status"] for _ in range(3)] == ["READY"] * 3
    assert holder[0].connections == 3  # each later call found its connection closed and went on a new one


def test_async_calls_reuse_the_connection_and_reconnect_transparently(endpoint: Any) -> None:
    holder: list[FakeEndpoint] = []
    holder.append(endpoint(_close_after_one(holder)))

    async def calls() -> list[dict[str, Any]]:
        async with AsyncClient(holder[0].listen, pins=PINS) as client:
            return [await client.basis("join") for _ in range(3)]

    assert [a["status"] for a in anyio.run(calls)] == ["READY"] * 3
    assert holder[0].connections == 3


def test_no_answer_within_the_deadline_raises_query_timeout_and_drops_the_connection(endpoint: Any) -> None:
    fake = endpoint(lambda request, n: None if n == 1 else OK)
    with Client(fake.listen, pins=PINS) as client:
        with pytest.raises(QueryTimeout):
            client.resolve_flow_binding("flow-1", deadline_ms=50)
        # The next call does not read the late answer of the first: it has a connection of its own.
        assert client.resolve_flow_binding("flow-2")["status"] == "READY"
    assert fake.requests[0][1]["deadline_ms"] <= 50 and fake.connections == 2


def test_pins_are_checked_when_built_and_calls_need_some(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"pins.seed, pins.run_id|pins.seed is invalid"):
        Pins.from_mapping({**PINS, "seed": -1})
    with pytest.raises(ValueError, match="pins.colour is not a pin"):
        Pins.from_mapping({**PINS, "colour": "red"})
    assert Pins.from_mapping(PINS).as_dict() == PINS
    with pytest.raises(ValueError, match="no pins"):
        Client(f"unix:{tmp_path / 'none.sock'}").resolve_flow_binding("flow-1")
    with pytest.raises(QueryEndpointUnavailable, match="No such file or directory"):
        Client(f"unix:{tmp_path / 'none.sock'}", pins=PINS, max_attempts=1).resolve_flow_binding("flow-1")
