"""The join plane end to end through a real `ctxplane run` process and the socket."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ctxplane.runtime.client import Client
from tests.support.process import CtxplaneProcess, ctxplane, write_config
from tests.support.stores import fresh_dsn, query_rows
from tests.support.workload import (
    ANCHOR_BASELINE,
    ARRIVAL,
    OTHER_RUN,
    PINS,
    append_raw,
    context_events,
    envelope,
    publish,
)


def _resolve(client: Client, flow_id: str, pins: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return client.request({"op": "resolve_flow_binding", "pins": pins or PINS, "flow_id": flow_id, "request_id": flow_id, **extra})


def _parity(n: int) -> list[tuple[str, dict[str, Any]]]:
    return [item for seq in range(1, n + 1) for item in context_events(seq)]


@pytest.fixture
def config(tmp_path: Path, store_dsn: str) -> Path:
    """A config for each backend (the name is historical: PostgreSQL runs the same tests)."""
    return write_config(tmp_path, store_dsn, features={"enabled": False})


def _digest(config: Path, *flags: str) -> str:
    result = ctxplane("digest", "--config", str(config), *flags)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def _sql(config: Path, sql: str) -> list[tuple[Any, ...]]:
    from ctxplane.config.settings import load_settings

    return query_rows(load_settings(config).store.dsn, sql)


@pytest.mark.parametrize("n", [20, 200])
def test_parity_runs_all_ready_and_repoll_changes_nothing(config: Path, n: int) -> None:
    publish(config.parent / "eb", _parity(n))
    assert ctxplane("run", "--config", str(config), "--once").returncode == 0
    digest = _digest(config)
    assert _sql(config, "SELECT count(*) FROM (SELECT DISTINCT merchant_id, arrival_seq FROM join_frame_roles) AS k") == [(n,)]
    assert _sql(config, "SELECT count(*) FROM flow_binding_claims") == [(n,)]
    assert _sql(config, "SELECT count(*) FROM apply_failures") == [(0,)]
    with CtxplaneProcess(config) as proc, Client(f"unix:{config.parent / 'q.sock'}") as client:
        answers = [_resolve(client, f"flow-{seq}") for seq in range(1, n + 1)]
        assert {a["status"] for a in answers} == {"READY"}
        seven = _resolve(client, "flow-7")
        assert seven["join_frame_key"]["arrival_seq"] == 7
        assert set(seven["context_refs"]) == {"arrival_event", "arrival_entities", "flow_anchor"}
        kinds = {e["kind"] for e in seven["evidence_refs"]}
        assert kinds == {"flow_binding_source_event", "join_frame_source_event", "join_checkpoint"}
        basis = client.request({"op": "basis", "plane": "join"})["planes"]["join"]
    assert proc.proc is not None and proc.proc.returncode == 0
    # A re-poll over the same bus: nothing new, same state, same basis.
    assert ctxplane("run", "--config", str(config), "--once").returncode == 0
    assert _digest(config) == digest
    with CtxplaneProcess(config), Client(f"unix:{config.parent / 'q.sock'}") as client:
        assert client.request({"op": "basis", "plane": "join"})["planes"]["join"]["basis_digest"] == basis["basis_digest"]


def test_once_twice_over_redelivered_bus_counts_duplicates(config: Path) -> None:
    items = _parity(10)
    publish(config.parent / "eb", items)
    assert ctxplane("run", "--config", str(config), "--once").returncode == 0
    first = _digest(config)
    publish(config.parent / "eb", items)  # the bus re-delivers everything
    assert ctxplane("run", "--config", str(config), "--once").returncode == 0
    assert _digest(config) == first
    counters = dict(_sql(config, "SELECT name, sum(value) FROM intake_counters GROUP BY name"))
    assert counters == {"applied": 30, "duplicate": 30}


def test_bad_inputs_become_ledger_rows_and_the_partition_moves_on(config: Path) -> None:
    eb = config.parent / "eb"
    seq_events = context_events(1)
    other_run = {**PINS, "platform_run_id": OTHER_RUN}
    mutated = dict(seq_events[0][1], payload={"merchant_id": "m-2", "arrival_seq": 1, "changed": True})
    no_seq = envelope(ARRIVAL[1], {"merchant_id": "m-9"}, eid="9" * 64)
    anchor_no_flow = envelope(ANCHOR_BASELINE[1], {"merchant_id": "m-9", "arrival_seq": 9}, eid="8" * 64)
    missing_pins = envelope(ARRIVAL[1], {"merchant_id": "m-9", "arrival_seq": 3}, eid="7" * 64)
    del missing_pins["parameter_hash"]
    publish(eb, [*seq_events, (ARRIVAL[0], mutated), (ARRIVAL[0], no_seq), (ANCHOR_BASELINE[0], anchor_no_flow),
                 (ARRIVAL[0], missing_pins)], partitions=1)
    append_raw(eb, ARRIVAL[0], 0, b"not json\n\xff\xfe\n[1, 2]\n" + b'{"x": "' + b"y" * (2 * 1024 * 1024) + b'"}\n')
    append_raw(eb, ARRIVAL[0], 0, b'{"event_id": "x", "event_type": "arrival_events_5B"}\n')
    wrong_type = envelope("s2_event_stream_baseline_6B", {"merchant_id": "m", "arrival_seq": 1}, eid="6" * 64)
    publish(eb, [(ARRIVAL[0], wrong_type)], partitions=1)
    proc = CtxplaneProcess(config, "--once", env={"CTXPLANE__RUN__PLATFORM_RUN_ID": PINS["platform_run_id"]})
    publish(eb, [(ARRIVAL[0], envelope(ARRIVAL[1], {"merchant_id": "m-9", "arrival_seq": 4}, eid="5" * 64, pins=other_run))], partitions=1)
    proc.start()
    assert proc.wait() == 0
    reasons = sorted(r for (r,) in _sql(config, "SELECT reason_code FROM apply_failures"))
    assert reasons == sorted([
        "INTAKE_PAYLOAD_HASH_MISMATCH", "JOIN_KEY_MISSING", "FLOW_ID_MISSING", "REQUIRED_PINS_MISSING",
        "ENVELOPE_MISSING", "ENVELOPE_MISSING", "ENVELOPE_MISSING", "ENVELOPE_MISSING", "ENVELOPE_INVALID",
        "EVENT_CLASS_UNSUPPORTED", "RUN_SCOPE_MISMATCH",
    ])
    # The checkpoint moved past every record: the partition is not blocked.
    lines = (eb / ARRIVAL[0] / "partition=0.jsonl").read_bytes().count(b"\n")
    assert _sql(config, f"SELECT next_offset FROM checkpoints WHERE topic = '{ARRIVAL[0]}'") == [(str(lines),)]
    # The first applied version stands.
    assert _sql(config, "SELECT count(*) FROM join_frame_roles WHERE role = 'arrival_event'") == [(1,)]


def test_late_events_are_applied_and_annotated(config: Path) -> None:
    eb = config.parent / "eb"
    publish(eb, [*context_events(1, ts_s=1000), *context_events(2, ts_s=500), *context_events(3, ts_s=950)], partitions=1)
    assert ctxplane("run", "--config", str(config), "--once").returncode == 0
    late = _sql(config, "SELECT event_id FROM apply_failures WHERE reason_code = 'LATE_CONTEXT_EVENT'")
    assert len(late) == 3  # seq 2's three events are > 120 s behind the watermark; seq 3's are within
    assert _sql(config, "SELECT count(*) FROM flow_binding_claims") == [(3,)]


def test_every_query_status(config: Path) -> None:
    eb = config.parent / "eb"
    items = [*context_events(1), *context_events(2)]
    items += [i for i in context_events(3) if i[0] != ARRIVAL[0]]  # incomplete: no arrival event
    items += [context_events(4)[2]]  # orphan anchor: binding, frame has only the anchor
    dup_anchor = envelope(ANCHOR_BASELINE[1], {"merchant_id": "m-6", "arrival_seq": 5, "flow_id": "flow-5-dup"}, eid="d" * 64)
    items += [*context_events(5), (ANCHOR_BASELINE[0], dup_anchor)]  # a key claimed by two flows
    publish(eb, items)
    with CtxplaneProcess(config) as _proc, Client(f"unix:{config.parent / 'q.sock'}") as client:
        for seq in (1, 2, 3, 4, 5):
            _resolve(client, f"flow-{seq}", wait_ms=2000)
        assert _resolve(client, "flow-1")["status"] == "READY"
        missing = _resolve(client, "flow-404")
        assert (missing["status"], missing["reason_codes"]) == ("MISSING_BINDING", ["FLOW_BINDING_NOT_FOUND"])
        assert "lag" in missing and missing["basis"]["watermark_ts_utc"] is not None
        incomplete = _resolve(client, "flow-3")
        assert (incomplete["status"], incomplete["reason_codes"]) == ("MISSING_JOIN_FRAME", ["JOIN_FRAME_INCOMPLETE"])
        conflict = _resolve(client, "flow-5")
        assert (conflict["status"], conflict["reason_codes"]) == ("CONFLICT", ["FLOW_BINDING_CONFLICT"])
        assert _resolve(client, "flow-5-dup")["status"] == "CONFLICT"
        orphan = _resolve(client, "flow-4")
        assert (orphan["status"], orphan["reason_codes"]) == ("MISSING_JOIN_FRAME", ["JOIN_FRAME_INCOMPLETE"])
        mismatch = _resolve(client, "flow-1", pins={**PINS, "parameter_hash": "0" * 64})
        assert (mismatch["status"], mismatch["reason_codes"]) == ("CONFLICT", ["PINS_MISMATCH"])
        other_run = _resolve(client, "flow-1", pins={**PINS, "platform_run_id": OTHER_RUN})
        assert other_run["status"] == "MISSING_BINDING"  # another run's data is never read
        key = {"merchant_id": "m-3", "arrival_seq": 2}
        frame = client.request({"op": "fetch_join_frame", "pins": PINS, "join_frame_key": key})
        assert frame["status"] == "READY" and frame["join_frame"]["context_complete"] is True
        frame = client.request({"op": "fetch_join_frame", "pins": PINS, "join_frame_key": {"merchant_id": "m-4", "arrival_seq": 3}})
        assert (frame["status"], frame["reason_codes"]) == ("MISSING_JOIN_FRAME", ["JOIN_FRAME_INCOMPLETE"])
        absent = client.request({"op": "fetch_join_frame", "pins": PINS, "join_frame_key": {"merchant_id": "m-0", "arrival_seq": 99}})
        assert (absent["status"], absent["reason_codes"]) == ("MISSING_JOIN_FRAME", ["JOIN_FRAME_NOT_FOUND"])
        invalid = client.request({"op": "resolve_flow_binding", "pins": PINS})
        assert (invalid["status"], invalid["reason_codes"]) == ("INVALID_REQUEST", ["INVALID_REQUEST"])
        assert "flow_id" in invalid["detail"]
        origin_style = client.request({"query_kind": "resolve_flow_binding", "request_id": "q", "pins": PINS, "flow_id": "flow-2"})
        assert origin_style["status"] == "READY" and origin_style["request_id"] == "q"


def test_wait_ms_is_woken_by_the_commit(config: Path) -> None:
    eb = config.parent / "eb"
    publish(eb, context_events(1))
    with CtxplaneProcess(config), Client(f"unix:{config.parent / 'q.sock'}") as client:
        assert _resolve(client, "flow-1", wait_ms=5000)["status"] == "READY"
        assert _resolve(client, "flow-2")["status"] == "MISSING_BINDING"
        # Ask first, publish while the request waits: the answer arrives with the commit.
        import threading

        publisher = threading.Timer(0.2, lambda: publish(eb, context_events(2)))  # sync-ok: publishes while the request waits
        publisher.start()
        answer = _resolve(client, "flow-2", wait_ms=10_000, deadline_ms=15_000)
        publisher.join()
        assert answer["status"] == "READY"


def test_socket_bad_requests_get_errors_and_the_server_stays_up(config: Path) -> None:
    publish(config.parent / "eb", context_events(1))
    listen = f"unix:{config.parent / 'q.sock'}"
    with CtxplaneProcess(config) as proc, Client(listen) as client:
        assert client.request({"op": "nope"})["code"] == "INVALID_REQUEST"
        no_pins = client.request({"op": "resolve_flow_binding", "flow_id": "flow-1", "request_id": "a"})
        assert (no_pins["status"], no_pins["request_id"]) == ("INVALID_REQUEST", "a") and "pins" in no_pins["detail"]
        bad_pins = client.request({"op": "resolve_flow_binding", "flow_id": "flow-1", "pins": {**PINS, "seed": -1}})
        assert bad_pins["status"] == "INVALID_REQUEST" and "seed" in bad_pins["detail"]
        assert client.request({"op": "resolve_flow_binding", "pins": PINS, "flow_id": "flow-1", "deadline_ms": 0})["status"] == "INVALID_REQUEST"
        assert client._sock is not None
        client._sock.sendall(b"{oops\n" + b"z" * 70_000 + b"\n")
        malformed, oversized = client.receive_line(), client.receive_line()
        assert malformed["code"] == oversized["code"] == "INVALID_REQUEST" and "exceeds" in oversized["detail"]
        assert client.request({"op": "health"})["health"]["state"] in ("GREEN", "AMBER")
        with Client(listen) as other:
            assert _resolve(other, "flow-1", wait_ms=3000)["status"] == "READY"
        assert proc.proc is not None and proc.proc.poll() is None
    assert proc.proc.returncode == 0


def test_same_bus_gives_the_same_digest_on_both_backends(tmp_path: Path) -> None:
    import anyio

    items = [item for seq in range(1, 41) for item in context_events(seq)]
    dup = envelope(ANCHOR_BASELINE[1], {"merchant_id": "m-2", "arrival_seq": 1, "flow_id": "flow-1-dup"}, eid="d" * 64)
    digests = []
    for backend in ("sqlite", "postgresql"):
        directory = tmp_path / backend
        directory.mkdir()
        config = write_config(directory, anyio.run(fresh_dsn, backend, directory))
        publish(directory / "eb", [*items, (ANCHOR_BASELINE[0], dup)])
        append_raw(directory / "eb", ARRIVAL[0], 0, b"junk\n")
        assert ctxplane("run", "--config", str(config), "--once").returncode == 0
        digests.append((_digest(config), _digest(config, "--ledger")))
    assert digests[0] == digests[1]


def test_fetch_join_frame_with_an_arrival_seq_beyond_bigint_is_invalid_and_the_endpoint_stays_up(config: Path) -> None:
    # Issue 15, item 1: on SQLite this request ended the server task (the socket vanished, nothing
    # logged, no restart); on PostgreSQL it answered UNAVAILABLE, retryable.
    publish(config.parent / "eb", context_events(1))
    listen = f"unix:{config.parent / 'q.sock'}"
    with CtxplaneProcess(config) as proc, Client(listen) as client:
        assert _resolve(client, "flow-1", wait_ms=3000)["status"] == "READY"
        for seq in (2**63, 2**64 - 1, "1" * 40):
            answer = client.request({"op": "fetch_join_frame", "pins": PINS, "join_frame_key": {"merchant_id": "m-2", "arrival_seq": seq}})
            assert answer["status"] == "INVALID_REQUEST" and "join_frame_key.arrival_seq" in answer["detail"], answer
        assert client._sock is not None  # a 40-digit JSON number (a float once parsed) on the wire
        key = b'{"merchant_id": "m-2", "arrival_seq": 1234567890123456789012345678901234567890}'
        client._sock.sendall(b'{"op": "fetch_join_frame", "pins": ' + json.dumps(PINS).encode() + b', "join_frame_key": ' + key + b"}\n")
        assert client.receive_line()["status"] == "INVALID_REQUEST"
        frame = client.request({"op": "fetch_join_frame", "pins": PINS, "join_frame_key": {"merchant_id": "m-2", "arrival_seq": 1}})
        assert frame["status"] == "READY"
        with Client(listen) as other:
            assert other.request({"op": "health"})["health"]["state"] in ("GREEN", "AMBER")
        assert proc.proc is not None and proc.proc.poll() is None
    assert proc.proc.returncode == 0
    assert not [e for e in proc.events() if e.get("level") in ("error", "critical")]


def test_a_context_event_with_arrival_seq_beyond_bigint_is_ledgered_and_ingest_moves_on(config: Path) -> None:
    # Issue 15, item 2 (a poison pill): the store-writer raised on this record (OverflowError on
    # SQLite, DataError on PostgreSQL), every restart read it again, and the process exited 1.
    eb = config.parent / "eb"
    poison = envelope(ARRIVAL[1], {"merchant_id": "m-1", "arrival_seq": 2**63}, eid="9" * 64)
    digits = envelope(ARRIVAL[1], {"merchant_id": "m-1", "arrival_seq": "9" * 5000}, eid="8" * 64)
    publish(eb, [*context_events(1), (ARRIVAL[0], poison), (ARRIVAL[0], digits), *context_events(2)], partitions=1)
    for _ in range(2):  # the second pass re-reads nothing and ledgers nothing again
        result = ctxplane("run", "--config", str(config), "--once")
        assert result.returncode == 0, result.stderr[-2000:]
        assert sorted(_sql(config, "SELECT reason_code, event_id, source_offset FROM apply_failures")) == [
            ("PAYLOAD_INVALID", "8" * 64, "2"), ("PAYLOAD_INVALID", "9" * 64, "1")]
    lines = (eb / ARRIVAL[0] / "partition=0.jsonl").read_bytes().count(b"\n")
    assert _sql(config, f"SELECT next_offset FROM checkpoints WHERE topic = '{ARRIVAL[0]}'") == [(str(lines),)]
    assert _sql(config, "SELECT count(*) FROM join_frame_roles") == [(6,)]


def test_deadline_and_wait_above_the_configured_cap_are_invalid_requests(tmp_path: Path) -> None:
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 's.sqlite'}", query={"max_deadline_ms": 5000})
    listen = f"unix:{tmp_path / 'q.sock'}"
    with CtxplaneProcess(config), Client(listen) as client:
        for extra in ({"wait_ms": 1_000_000_000, "deadline_ms": 1_000_000_000_000}, {"deadline_ms": 5001},
                      {"wait_ms": 5001}):
            answer = client.request({"op": "resolve_flow_binding", "pins": PINS, "flow_id": "flow-1", **extra})
            assert answer["status"] == "INVALID_REQUEST", answer
            assert "query.max_deadline_ms" in json.dumps(answer)
        at_cap = client.request({"op": "resolve_flow_binding", "pins": PINS, "flow_id": "flow-1", "deadline_ms": 5000})
        assert at_cap["status"] == "MISSING_BINDING"
        assert client.request({"op": "health"})["status"] == "OK"  # the endpoint still answers
