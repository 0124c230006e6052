"""Pins without trial and error: `ctxplane runs` lists the runs and full pins the store holds, and a
request with several pins wrong names all of them in one answer (both planes)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.process import CtxplaneProcess, ctxplane, write_config
from tests.support.workload import OTHER_RUN, PINS, TRAFFIC_FRAUD, context_events, envelope, publish

OTHER_PINS = {**PINS, "platform_run_id": OTHER_RUN, "scenario_run_id": "c" * 32, "seed": 7}
del OTHER_PINS["run_id"]  # a run whose events carry no run_id: its pins have none either


def _traffic(n: int, pins: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return TRAFFIC_FRAUD[0], envelope(TRAFFIC_FRAUD[1], {"flow_id": f"flow-{n}", "amount": 5}, eid=f"{n + 9000:064x}",
                                      ts_s=float(n), pins=pins)


def _query(config: Path, request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    result = ctxplane("query", "--config", str(config), json.dumps(request))
    return result.returncode, json.loads(result.stdout)


def test_runs_lists_every_run_with_its_full_pins_and_those_pins_answer_a_query(tmp_path: Path, store_dsn: str) -> None:
    config = write_config(tmp_path, store_dsn)
    empty = ctxplane("runs", "--config", str(config))
    assert empty.returncode == 2 and "ctxplane migrate" in empty.stderr  # nothing there yet: says what to do
    publish(tmp_path / "eb", [*context_events(1), *context_events(2), _traffic(1, PINS),
                              *context_events(3, pins=OTHER_PINS), _traffic(2, OTHER_PINS), _traffic(3, OTHER_PINS)])
    assert ctxplane("run", "--config", str(config), "--once").returncode == 0

    listed = ctxplane("runs", "--config", str(config), "--json")  # from the store alone: no process runs
    assert listed.returncode == 0, listed.stderr
    runs = json.loads(listed.stdout)
    assert runs == [
        {"platform_run_id": PINS["platform_run_id"], "scenario_run_id": PINS["scenario_run_id"], "pins": PINS,
         "events": {"join": 6, "features": 1},
         "first_event_ts_utc": "2026-02-07T05:00:01.000000Z", "last_event_ts_utc": "2026-02-07T05:00:02.000000Z"},
        {"platform_run_id": OTHER_RUN, "scenario_run_id": "c" * 32, "pins": OTHER_PINS,
         "events": {"join": 3, "features": 2},
         "first_event_ts_utc": "2026-02-07T05:00:02.000000Z", "last_event_ts_utc": "2026-02-07T05:00:03.000000Z"},
    ]
    text = ctxplane("runs", "--config", str(config))
    assert text.returncode == 0
    lines = text.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[1].startswith(f"{OTHER_RUN}  scenario_run_id={'c' * 32}  events join=3 features=2")
    # The pins printed on a line are what a request needs, as they are.
    printed = json.loads(lines[1].split("pins=", 1)[1])
    with CtxplaneProcess(config):
        code, answer = _query(config, {"op": "resolve_flow_binding", "flow_id": "flow-3", "pins": printed})
        assert (code, answer["status"]) == (0, "READY"), answer


@pytest.mark.parametrize("backend", ["sqlite"])
def test_every_missing_or_invalid_pin_is_named_in_one_answer_on_both_planes(tmp_path: Path, store_dsn: str) -> None:
    config = write_config(tmp_path, store_dsn)
    publish(tmp_path / "eb", [*context_events(1), _traffic(1, PINS)])
    assert ctxplane("run", "--config", str(config), "--once").returncode == 0
    partial = {"platform_run_id": PINS["platform_run_id"], "scenario_id": PINS["scenario_id"],
               "manifest_fingerprint": "F" * 64, "colour": "red"}
    features = {"op": "get_features", "as_of_time_utc": "2026-02-07T05:00:01.000000Z",
                "feature_keys": [{"key_type": "flow_id", "key_id": "flow-1"}],
                "feature_groups": [{"name": "core_features", "version": "v1"}]}
    with CtxplaneProcess(config):
        for request, status, code in (
            ({"op": "resolve_flow_binding", "flow_id": "flow-1", "pins": partial}, "INVALID_REQUEST", "MISSING_PINS"),
            ({**features, "pins": partial}, "ERROR", "MISSING_PINS"),
        ):
            exit_code, answer = _query(config, request)
            assert (exit_code, answer["status"], answer["code"], answer["retryable"]) == (1, status, code, False), answer
            detail = answer["detail"]
            assert detail.startswith("pins.scenario_run_id, pins.parameter_hash, pins.seed are required; "
                                     "pins.manifest_fingerprint is invalid (expected 64 lowercase hex characters); "
                                     "pins.colour is not a pin"), detail
            assert "ctxplane runs" in detail
        # Nothing missing, two formats wrong: both named; the feature plane says INVALID_REQUEST.
        wrong = {**PINS, "seed": -1, "scenario_run_id": "x"}
        _, answer = _query(config, {**features, "pins": wrong})
        assert (answer["code"], answer["detail"]) == ("INVALID_REQUEST",
            "pins.scenario_run_id is invalid (expected 32 lowercase hex characters); "
            "pins.seed is invalid (expected an integer 0..2^64-1)")
        _, answer = _query(config, {**features})
        assert answer["code"] == "MISSING_PINS" and "platform_run_id, scenario_run_id, manifest_fingerprint" in answer["detail"]
