"""Every error answer of every op carries ``code``, ``retryable`` and ``detail`` (contracts.md §3),
so a client classifies errors one way; join-plane statuses stay as pinned. Real ``ctxplane run``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ctxplane.runtime.client import Client
from tests.support.process import CtxplaneProcess, write_config
from tests.support.workload import PINS, context_events, publish

ERROR_CASES: list[tuple[dict[str, Any], str, str]] = [
    # (request, expected status, expected code)
    ({"op": "no_such_op"}, "ERROR", "INVALID_REQUEST"),
    ({"op": "resolve_flow_binding", "flow_id": "f"}, "INVALID_REQUEST", "INVALID_REQUEST"),  # no pins
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
