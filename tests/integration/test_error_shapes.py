"""Every error answer of every op carries ``code``, ``retryable`` and ``detail`` (docs/protocol.md §Errors),
so a client classifies errors one way; join-plane statuses stay as pinned. Real ``ctxplane run``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ctxplane.runtime.client import Client
from tests.support.process import CtxplaneProcess, ctxplane, write_config
from tests.support.workload import PINS, context_events, publish

ERROR_CASES: list[tuple[dict[str, Any], str, str]] = [
    # (request, expected status, expected code)
    ({"op": "no_such_op"}, "ERROR", "INVALID_REQUEST"),
    # No pins: MISSING_PINS, as on the feature plane (docs/architecture.md §Pins: one rule for every read).
    ({"op": "resolve_flow_binding", "flow_id": "f"}, "INVALID_REQUEST", "MISSING_PINS"),
    ({"op": "fetch_join_frame", "pins": PINS, "join_frame_key": {"merchant_id": "m", "arrival_seq": 2**63}},
     "INVALID_REQUEST", "INVALID_REQUEST"),
    ({"op": "resolve_flow_binding", "pins": PINS, "flow_id": "f", "deadline_ms": 0}, "INVALID_REQUEST", "INVALID_REQUEST"),
    ({"op": "resolve_flow_binding", "pins": PINS, "flow_id": "f", "deadline_ms": 10**9}, "INVALID_REQUEST", "INVALID_REQUEST"),
    ({"op": "get_features", "pins": PINS}, "ERROR", "INVALID_REQUEST"),
    ({"op": "basis", "plane": "nope"}, "ERROR", "INVALID_REQUEST"),
    ({"op": "drill", "name": "actor-fault"}, "ERROR", "DRILLS_DISABLED"),
]


def test_every_error_answer_has_a_code_a_retryable_flag_and_a_detail(tmp_path: Path) -> None:
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'store.sqlite'}")
    publish(tmp_path / "eb", list(context_events(1)), partitions=1)
    with CtxplaneProcess(config), Client(f"unix:{tmp_path / 'q.sock'}") as client:
        for request, status, code in ERROR_CASES:
            answer = client.request({**request, "request_id": "r"})
            assert (answer["status"], answer["code"], answer["request_id"]) == (status, code, "r"), answer
            assert answer["retryable"] is False and isinstance(answer["detail"], str) and answer["detail"], answer


def test_ctxplane_query_exits_1_on_an_error_answer_and_pipelines_ndjson(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'store.sqlite'}")
    publish(tmp_path / "eb", list(context_events(1)), partitions=1)
    resolve = {"op": "resolve_flow_binding", "pins": PINS, "flow_id": "flow-1", "wait_ms": 20_000, "deadline_ms": 25_000}
    with CtxplaneProcess(config):
        ok = ctxplane("query", "--config", str(config), json.dumps(resolve))
        assert ok.returncode == 0 and json.loads(ok.stdout)["status"] == "READY"
        missing = ctxplane("query", "--config", str(config), json.dumps({**resolve, "flow_id": "nope", "wait_ms": 0}))
        assert missing.returncode == 0 and json.loads(missing.stdout)["status"] == "MISSING_BINDING"  # an answer
        bad = ctxplane("query", "--config", str(config), '{"op": "no_such_op"}')
        assert bad.returncode == 1 and json.loads(bad.stdout)["code"] == "INVALID_REQUEST"
        lines = "\n".join(json.dumps({**resolve, "request_id": f"r{i}"}) for i in range(40)) + '\n{"op": "basis"}\n'
        many = subprocess.run([sys.executable, "-m", "ctxplane.actors.app.cli", "query", "--config", str(config), "-"],
                              input=lines, capture_output=True, text=True, timeout=60)
        answers = [json.loads(line) for line in many.stdout.splitlines()]
        assert many.returncode == 0 and [a.get("request_id") for a in answers] == [f"r{i}" for i in range(40)] + [None]
        assert {a["status"] for a in answers} == {"READY", "OK"}
        with_error = subprocess.run([sys.executable, "-m", "ctxplane.actors.app.cli", "query", "--config", str(config), "-"],
                                    input=lines + '{"op": "nope"}\n', capture_output=True, text=True, timeout=60)
        assert with_error.returncode == 1 and len(with_error.stdout.splitlines()) == 42
