"""Query worker processes under ``kill -9``, through a real ``ctxplane run``.

A killed worker is restarted (and counted on /metrics) while the supervisor and ingest carry on;
a killed supervisor leaves no worker behind (each reads its channel's EOF, and on Linux the kernel
delivers SIGKILL to it as its parent dies). Process exits are awaited through pidfds, not polled.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import urllib.request
from pathlib import Path

from ctxplane.runtime.client import Client
from tests.support.process import CtxplaneProcess, write_config
from tests.support.workload import PINS, context_events, publish

GUARD_S = 60.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found.update(int(child) for child in (task / "children").read_text().split())
    return found


def _wait_exited(pid: int, timeout: float) -> bool:
    """True once process ``pid`` has exited (a zombie counts), False if it outlived ``timeout``."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        readable, _, _ = select.select([fd], [], [], timeout)
        return bool(readable)
    finally:
        os.close(fd)


def _served_by(listen: str) -> int:
    with Client(listen, timeout_s=GUARD_S) as client:
        return int(client.request({"op": "health"})["served_by"]["pid"])


def _resolve(client: Client, flow: str) -> str:
    answer = client.request({"op": "resolve_flow_binding", "pins": PINS, "flow_id": flow, "wait_ms": 30_000,
                             "deadline_ms": 40_000})
    return str(answer["status"])


def test_a_killed_worker_is_restarted_and_counted_while_ingest_carries_on(tmp_path: Path) -> None:
    port = _free_port()
    listen = f"unix:{tmp_path / 'q.sock'}"
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'store.sqlite'}", metrics={"listen": f"127.0.0.1:{port}"})
    publish(tmp_path / "eb", [item for seq in range(1, 6) for item in context_events(seq)], partitions=1)
    with CtxplaneProcess(config) as run:
        assert run.proc is not None
        with Client(listen) as client:
            assert _resolve(client, "flow-5") == "READY"
        victim = _served_by(listen)
        assert victim in _children(run.proc.pid)
        os.kill(victim, signal.SIGKILL)
        assert _wait_exited(victim, GUARD_S)
        with Client(listen, timeout_s=GUARD_S) as client:  # answered by the restarted worker
            replacement = int(client.request({"op": "health"})["served_by"]["pid"])
            assert replacement != victim
            publish(tmp_path / "eb", [item for seq in range(6, 9) for item in context_events(seq)], partitions=1)
            assert _resolve(client, "flow-8") == "READY"  # ingest went on, and wait_ms woke across processes
            client.request({"op": "health"})  # forwarded after the worker shipped the latencies before it
        assert run.proc.poll() is None
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        assert 'ctxplane_actor_restarts_total{child="query-worker-0",supervisor="query"} 1.0' in metrics
        # The query actor itself was not restarted (its series exists from start-up, at zero).
        assert 'ctxplane_actor_restarts_total{child="query",supervisor="root"} 0.0' in metrics
        assert "ctxplane_query_seconds_count{op=\"resolve_flow_binding\",status=\"READY\"} 2.0" in metrics
    assert any(e.get("event") == "query worker died; restarting it" for e in run.events())


def test_a_killed_supervisor_leaves_no_worker_behind(tmp_path: Path) -> None:
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'store.sqlite'}", query={"workers": 2})
    publish(tmp_path / "eb", [item for seq in range(1, 3) for item in context_events(seq)], partitions=1)
    with CtxplaneProcess(config) as run:
        assert run.proc is not None
        workers = _children(run.proc.pid)
        assert len(workers) == 2
        run.kill()  # SIGKILL: nothing of the supervisor runs after it
        assert all(_wait_exited(pid, GUARD_S) for pid in workers)


def test_sigterm_answers_a_waiting_request_at_once_then_the_process_exits_cleanly(tmp_path: Path) -> None:
    wait_ms = 600_000  # far beyond the socket's guard: only the stop can end this wait in time
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'store.sqlite'}", query={"max_deadline_ms": wait_ms})
    publish(tmp_path / "eb", list(context_events(1)), partitions=1)
    run = CtxplaneProcess(config).start()
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(GUARD_S)
        sock.connect(str(tmp_path / "q.sock"))
        sock.sendall(b'{"op": "basis"}\n')
        assert json.loads(sock.recv(65536))["status"] == "OK"  # accepted and served by a worker
        sock.sendall(json.dumps({"op": "resolve_flow_binding", "request_id": "w", "pins": PINS, "flow_id": "flow-later",
                                 "wait_ms": wait_ms, "deadline_ms": wait_ms}).encode() + b"\n")
        assert run.proc is not None
        run.proc.send_signal(signal.SIGTERM)
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            assert chunk, "the connection closed without an answer:\n" + "\n".join(run.lines[-25:])
            data += chunk
        answer = json.loads(data)
        assert (answer["request_id"], answer["status"]) == ("w", "MISSING_BINDING")
        assert run.wait(GUARD_S) == 0
    finally:
        run.kill()
