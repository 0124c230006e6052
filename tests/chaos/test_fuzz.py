"""Bad input into a running supervisor (docs/performance.md §Reliability, "bad input").

Fuzzed bus lines (junk bytes, JSON that is not an envelope, envelopes with wrong field types, deep
nesting, huge lines) must become ledger rows only — one per non-blank line, the state digest
unchanged — and the process must stay up and keep answering. Fuzzed socket requests (random bytes,
JSON values, objects, known ops with wrong field types, huge integers, "NaN" strings) must get one
error response each, and a connection opened before the fuzzing must still be served afterwards.

One ``ctxplane run`` per module serves every example (each example waits for its lines to be
committed, polling the store with a deadline); drills are off in it, so the fuzzed ``drill`` ops
also check that nothing can inject a fault into a process that did not enable drills.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctxplane.actors.drills.controller import parse_drill_request
from ctxplane.actors.operate.demo_workload import (
    DEMO_TOPICS,
    TOPIC_ARRIVAL_EVENTS,
    TOPIC_TRAFFIC_FRAUD,
    demo_pins,
    write_demo_bus,
)
from tests.support.drills import digests, rss_bytes, wait_until
from tests.support.process import CtxplaneProcess, write_config
from tests.support.stores import query_rows
from tests.support.workload import append_raw

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                       HealthCheck.too_slow])


@dataclass
class Running:
    config: Path
    dsn: str
    eb: Path
    proc: CtxplaneProcess

    def ledger_rows(self) -> int:
        return int(query_rows(self.dsn, "SELECT count(*) FROM apply_failures")[0][0])

    def checkpoint(self, topic: str, partition: int) -> int:
        rows = query_rows(self.dsn, "SELECT next_offset FROM checkpoints WHERE topic = ? AND partition_id = ?",
                          (topic, partition))
        return int(rows[0][0]) if rows else 0

    def lines(self, topic: str, partition: int) -> int:
        return (self.eb / topic / f"partition={partition}.jsonl").read_bytes().count(b"\n")

    def alive(self) -> bool:
        return self.proc.proc is not None and self.proc.proc.poll() is None


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    directory = tmp_path_factory.mktemp("fuzz")
    eb = directory / "eb"
    write_demo_bus(eb, 30, partitions=2)
    dsn = f"sqlite:///{directory / 'store.sqlite'}"
    config = write_config(directory, dsn, bus={"root": str(eb)})
    with CtxplaneProcess(config) as proc:
        running = Running(config, dsn, eb, proc)
        for topic in DEMO_TOPICS:
            for partition in (0, 1):
                wait_until(lambda t=topic, p=partition: running.checkpoint(t, p) == running.lines(t, p), 30,
                           f"{topic}:{partition} consumed")
        yield running
    assert proc.proc is not None and proc.proc.returncode == 0  # it stopped gracefully at the end


# -- fuzzed bus lines ----------------------------------------------------------------------------

_VALID = {
    "event_id": "1" * 64, "event_type": "arrival_events_5B", "ts_utc": "2026-02-07T05:00:01.000000Z",
    **demo_pins(), "payload": {"merchant_id": "m-1", "arrival_seq": 1},
}
_REQUIRED = ("event_id", "event_type", "ts_utc", "manifest_fingerprint")
_wrong = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70), st.floats(allow_nan=False),
                   st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
_json_leaf = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**63 - 1),
                       st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20))
_json = st.recursive(_json_leaf, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                          st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                     max_leaves=12)


def _line(obj: Any) -> bytes:
    # The stdlib encoder: it writes integers beyond 64 bits too (which orjson, like the bus
    # reader, refuses), and escapes lone surrogates.
    return json.dumps(obj).encode()


@st.composite
def _wrong_envelope(draw: st.DrawFn) -> bytes:
    """A bus line whose envelope has one required field of the wrong type (and maybe junk keys)."""
    envelope = dict(_VALID)
    envelope[draw(st.sampled_from(_REQUIRED))] = draw(_wrong)
    if draw(st.booleans()):
        envelope[draw(st.text(min_size=1, max_size=8))] = draw(_json)
    wrapper = draw(st.sampled_from(("payload", "envelope", None)))
    return _line(envelope if wrapper is None else {"partition_key": "m-1", wrapper: envelope, "published_at_utc": "x"})


_junk_line = st.one_of(
    st.binary(min_size=1, max_size=200).map(lambda b: b.replace(b"\n", b"\\")),           # not JSON, not UTF-8
    _json.filter(lambda v: not isinstance(v, dict)).map(_line),                            # JSON, not an object
    st.dictionaries(st.text(max_size=8), _json, max_size=5).map(_line),                    # an object, no envelope
    _wrong_envelope(),                                                                      # wrong field types
    st.integers(min_value=1, max_value=3000).map(lambda d: b"[" * d + b"]" * d),           # deep nesting
    st.sampled_from([b'{"payload": NaN}', b'{"payload": {"event_id": Infinity}}', b"\xef\xbb\xbf{}", b"{" * 70,
                     b'{"payload": "' + b"\\ud800" + b'"}', b'"' + b"a" * 5000]),
)


@given(lines=st.lists(_junk_line, min_size=1, max_size=6), traffic=st.booleans())
@FUZZ
def test_fuzzed_bus_lines_become_ledger_rows_only(running: Running, lines: list[bytes], traffic: bool) -> None:
    topic, partition = (TOPIC_TRAFFIC_FRAUD, 1) if traffic else (TOPIC_ARRIVAL_EVENTS, 0)
    ledger = running.ledger_rows()
    end = running.lines(topic, partition) + len(lines)
    append_raw(running.eb, topic, partition, b"".join(line + b"\n" for line in lines))
    wait_until(lambda: running.checkpoint(topic, partition) == end or not running.alive(), 30, "the junk consumed")
    assert running.alive()
    # One ledger row per line that is not blank (a blank line is an offset without a record).
    assert running.ledger_rows() - ledger == sum(1 for line in lines if line.strip(b" \t\r\x0b\x0c"))


def test_huge_lines_are_ledgered_and_memory_stays_bounded(running: Running) -> None:
    assert running.proc.proc is not None
    before_state, _ = digests(running.config)
    rss_before = rss_bytes(running.proc.proc.pid) or 0
    ledger = running.ledger_rows()
    huge = [
        _line({"partition_key": "m-1", "payload": {**_VALID, "payload": {"blob": "x" * (2 * 1024 * 1024)}}}),
        b"[" + b"1," * (5 * 1024 * 1024) + b"1]",  # a 10 MB line
        b"x" * (3 * 1024 * 1024),
    ]
    end = running.lines(TOPIC_ARRIVAL_EVENTS, 1) + len(huge)
    append_raw(running.eb, TOPIC_ARRIVAL_EVENTS, 1, b"".join(line + b"\n" for line in huge))
    wait_until(lambda: running.checkpoint(TOPIC_ARRIVAL_EVENTS, 1) == end or not running.alive(), 60, "huge lines consumed")
    assert running.alive()
    assert running.ledger_rows() - ledger == len(huge)
    reasons = query_rows(running.dsn, "SELECT reason_code FROM apply_failures WHERE topic = ? AND partition_id = 1"
                         " AND CAST(source_offset AS INTEGER) >= ?", (TOPIC_ARRIVAL_EVENTS, end - len(huge)))
    assert sorted(r for (r,) in reasons) == ["ENVELOPE_MISSING"] * 3  # records over 1 MB are not parsed
    assert digests(running.config)[0] == before_state
    # Three lines of 2-10 MB each were read and refused: they were not kept.
    assert (rss_bytes(running.proc.proc.pid) or 0) - rss_before < 64 * 1024 * 1024


def test_junk_never_changed_the_state(running: Running, tmp_path: Path) -> None:
    """After all the fuzzing, the state equals a clean pass over the bus (junk only adds ledger rows)."""
    from tests.support.drills import clean_pass

    clean = clean_pass(tmp_path / "clean", running.eb)
    wait_until(lambda: all(running.checkpoint(t, p) == running.lines(t, p) for t in DEMO_TOPICS for p in (0, 1)), 30,
               "everything consumed")
    assert digests(running.config) == digests(clean)


# -- fuzzed socket requests ----------------------------------------------------------------------


class LineSocket:
    """A raw connection to the query endpoint: send bytes, read response lines."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(path)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> dict[str, Any]:
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            assert chunk, "the server closed the connection"
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return orjson.loads(line)  # type: ignore[no-any-return]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def endpoint(running: Running) -> Iterator[tuple[LineSocket, LineSocket]]:
    path = str(running.config.parent / "q.sock")
    fuzzed, bystander = LineSocket(path), LineSocket(path)
    yield fuzzed, bystander
    fuzzed.close()
    bystander.close()


_OPS = ("resolve_flow_binding", "fetch_join_frame", "get_features", "health", "basis", "drill")
_weird_number = st.one_of(st.integers(min_value=2**63, max_value=2**200), st.integers(max_value=0),
                          st.floats(allow_nan=False), st.sampled_from(["NaN", "Infinity", "-1", "1e999", ""]),
                          st.booleans(), st.none(), st.lists(st.integers(), max_size=2))


@st.composite
def _bad_known_op(draw: st.DrawFn) -> bytes:
    """A known op whose request is invalid for sure (a wrong-typed field it must validate)."""
    op = draw(st.sampled_from(_OPS))
    request: dict[str, Any] = {"op": op, **draw(st.dictionaries(st.sampled_from(
        ["pins", "flow_id", "join_frame_key", "feature_keys", "feature_groups", "as_of_time_utc", "wait_ms",
         "request_id", "plane", "action", "target", "by", "partition", "topic"]), _json, max_size=4))}
    if op in ("health", "basis", "drill") or draw(st.booleans()):
        # health/basis accept any extra field: make the deadline the invalid part.
        request["deadline_ms"] = draw(_weird_number.filter(lambda v: type(v) is not int or v <= 0))
    elif op in ("resolve_flow_binding", "fetch_join_frame"):
        request["flow_id"] = draw(_wrong)
        request["join_frame_key"] = draw(_wrong)
    else:
        request["pins"] = draw(st.one_of(_wrong, st.just({})))
    return _line(request)


_bad_request = st.one_of(
    st.binary(min_size=1, max_size=300).map(lambda b: b.replace(b"\n", b" ")).filter(lambda b: b.strip()),
    _json.filter(lambda v: not isinstance(v, dict)).map(_line),
    st.dictionaries(st.text(max_size=8), _json, max_size=5).filter(lambda d: d.get("op") not in _OPS
                                                                      and d.get("query_kind") not in _OPS).map(_line),
    _bad_known_op(),
    st.sampled_from([b'{"op": "health", "deadline_ms": NaN}', b'{"op": "basis", "deadline_ms": 1e400}',
                     b"[" * 5000, b'{"op": "health"' + b" " * 70000 + b"}",
                     # A huge but valid deadline must not overflow a timer before validation fails.
                     b'{"op": "resolve_flow_binding", "deadline_ms": ' + b"9" * 40 + b', "flow_id": 5}',
                     b'{"op": "get_features", "deadline_ms": 18446744073709551616, "pins": []}',
                     b'{"op": "drill", "action": "rewind", "by": ' + b"9" * 30 + b"}"]),
)


@given(requests=st.lists(_bad_request, min_size=1, max_size=5))
@FUZZ
def test_fuzzed_requests_get_error_responses_only(running: Running, endpoint: tuple[LineSocket, LineSocket],
                                                  requests: list[bytes]) -> None:
    fuzzed, _ = endpoint
    fuzzed.send(b"".join(r + b"\n" for r in requests))  # pipelined
    for request in requests:
        response = fuzzed.line()
        assert isinstance(response, dict), response
        assert response.get("status") in ("ERROR", "INVALID_REQUEST"), (request[:200], response)
    assert running.alive()


def test_the_endpoint_still_serves_everyone_after_the_fuzzing(running: Running, endpoint: tuple[LineSocket, LineSocket]) -> None:
    fuzzed, bystander = endpoint
    bystander.send(b'{"op": "health", "request_id": "after-fuzz"}\n')
    answer = bystander.line()
    assert answer["status"] == "OK" and answer["request_id"] == "after-fuzz"
    fuzzed.send(b'{"op": "basis"}\n')
    assert fuzzed.line()["status"] == "OK"
    # No drill could have run: drills are disabled in this process.
    assert query_rows(running.dsn, "SELECT count(*) FROM checkpoint_rewinds") == [(0,)]
    assert running.alive()


@given(request=st.dictionaries(st.sampled_from(["action", "target", "topic", "partition", "by", "request_id"]),
                               st.one_of(_json, _wrong, st.sampled_from(["status", "inject", "rewind", "partition",
                                                                         "store-writer"])), max_size=6))
@settings(max_examples=300, deadline=None)
def test_the_drill_request_parser_never_raises(request: dict[str, Any]) -> None:
    parsed = parse_drill_request(request)
    assert isinstance(parsed, str) or parsed.action in ("status", "inject", "rewind")

