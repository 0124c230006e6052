"""The pure parts of the drills: request parsing, workloads, intensity maths and the verdicts."""

from __future__ import annotations

from typing import Any

import pytest

from ctxplane.actors.drills.actor_fault import ActorFaultOptions, exceeds_intensity, judge_actor_fault
from ctxplane.actors.drills.conflict_storm import storm_events
from ctxplane.actors.drills.controller import DrillCommand, parse_drill_request
from ctxplane.actors.drills.db_outage import DbOutageOptions, judge_db_outage
from ctxplane.actors.drills.kit import Answer, Check, DrillReport, drill_workload
from ctxplane.actors.drills.offset_rollback import OffsetRollbackOptions, judge_offset_rollback
from ctxplane.config.settings import Settings


@pytest.mark.parametrize(
    ("request_", "problem"),
    [
        ({"action": "explode"}, "action must be one of"),
        ({"action": "inject"}, "target must be one of"),
        ({"action": "inject", "target": "store-writer", "topic": "t"}, "partition target only"),
        ({"action": "rewind"}, "by must be a positive integer"),
        ({"action": "rewind", "by": True}, "by must be a positive integer"),
        ({"action": "rewind", "by": 2**40}, "by must be a positive integer"),
        ({"action": "rewind", "by": 1, "partition": 0}, "partition needs topic"),
        ({"action": "rewind", "by": 1, "topic": "t", "partition": -1}, "partition must be"),
        ({"action": "status", "by": 3}, "by is only for action rewind"),
        ({"action": "status", "target": "partition"}, "target is only for action inject"),
    ],
)
def test_bad_drill_requests_are_named(request_: dict[str, Any], problem: str) -> None:
    parsed = parse_drill_request(request_)
    assert isinstance(parsed, str) and problem in parsed


def test_good_drill_requests_parse() -> None:
    assert parse_drill_request({"action": "rewind", "by": 5, "topic": "t", "partition": 1, "request_id": "r1"}) == \
        DrillCommand("rewind", topic="t", partition=1, by=5, label="drill rewind r1")
    assert parse_drill_request({"action": "inject", "target": "store-writer"}) == \
        DrillCommand("inject", target="store-writer", label="drill inject")


def test_a_drill_workload_is_fresh_valid_and_in_time_order() -> None:
    settings = Settings()
    one, two = drill_workload(settings, 50), drill_workload(settings, 50)
    assert len(one.items) == 50 and len(one.flows()) == 10
    assert not one.event_ids & two.event_ids  # a new seed per drill: nothing collides
    stamps = [env["ts_utc"] for _topic, env in one.items]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    padded = drill_workload(settings, 5, payload_bytes=100)
    assert all(len(env["payload"]["drill_filler"]) == 100 for _t, env in padded.items)


def test_storm_events_conflict_every_anchor_and_mismatch_every_arrival() -> None:
    workload = drill_workload(Settings(), 20)
    storm, anchors, mismatched = storm_events(workload)
    assert len(anchors) == len(mismatched) == 4 and len(storm) == 8
    originals = {env["event_id"]: env for _t, env in workload.items}
    for _topic, env in storm:
        if env["event_id"] in mismatched:  # same id, different payload
            assert env["payload"] != originals[env["event_id"]]["payload"]
        else:  # a new anchor claiming an existing key for another flow
            assert env["event_id"] not in originals and env["payload"]["flow_id"].endswith("-storm")


@pytest.mark.parametrize(
    ("times", "expected"),
    [([0.0] * 10, False), ([0.0] * 11, True), ([i * 1.5 for i in range(11)], True), ([i * 2.0 for i in range(11)], False)],
)
def test_intensity_is_exceeded_by_more_than_max_restarts_within_the_period(times: list[float], expected: bool) -> None:
    assert exceeds_intensity(times, max_restarts=10, period_s=15.0) is expected


def _answer(status: str, reason: str, seconds: float = 0.01) -> Answer:
    return Answer({"status": status, "reason_codes": [reason], "retryable": status == "UNAVAILABLE"}, seconds, 0.0)


def _outage_figures(**overrides: Any) -> dict[str, Any]:
    figures: dict[str, Any] = {
        "events_sent": 100, "applied": 100, "dedupe_added": 100, "duplicates": 0, "rejected": 0,
        "queries_during_outage": 2, "query_reasons": {"STORE_UNAVAILABLE": 2}, "max_answer_ms": 10.0,
        "health_states": ["RED"], "health_reasons": ["STORE_UNAVAILABLE"], "restarts": {}, "escalations": {},
        "same_process": True, "time_to_recover_s": 1.0, "ready_after_recovery": "READY",
        "rss_before_mb": 60.0, "rss_max_during_mb": 61.0, "digest_match": True,
    }
    return {**figures, **overrides}


def _failed(checks: list[Check]) -> list[str]:
    return [c.name for c in checks if not c.ok]


def test_db_outage_verdict() -> None:
    options = DbOutageOptions(seconds=1)
    unavailable = [_answer("UNAVAILABLE", "STORE_UNAVAILABLE")] * 2
    judge = lambda figures, answers=unavailable, ledger=None: _failed(  # noqa: E731
        judge_db_outage(figures, options, digest_detail="", ledger_delta=ledger or {}, outage=answers))
    assert judge(_outage_figures()) == []
    assert judge(_outage_figures(applied=99)) == ["every event applied exactly once"]
    assert judge(_outage_figures(restarts={"store-writer": 1})) == ["no restart, no escalation (the store-writer held its batches)"]
    assert judge(_outage_figures(health_reasons=["HEALTH_UNAVAILABLE"])) == ["health went RED with STORE_UNAVAILABLE"]
    assert judge(_outage_figures(rss_max_during_mb=500.0)) == ["memory bounded during the outage"]
    assert judge(_outage_figures(), ledger={"FLOW_BINDING_CONFLICT": 1}) == ["nothing unexplained in the ledger"]
    assert judge(_outage_figures(), ledger={"LATE_CONTEXT_EVENT": 3}) == []  # an annotation, not an anomaly
    late = [_answer("UNAVAILABLE", "STORE_UNAVAILABLE", seconds=2.0)]
    assert judge(_outage_figures(), answers=late) == ["every query answered within its deadline"]
    deadline_only = [_answer("UNAVAILABLE", "DEADLINE_EXCEEDED")]
    assert judge(_outage_figures(), answers=deadline_only) == ["queries answered UNAVAILABLE/STORE_UNAVAILABLE during the outage"]


def test_offset_rollback_verdict() -> None:
    figures = {"partitions_rewound": 2, "rewound": ["t:0 10->5", "t:1 8->3"], "rewind_errors": [], "rewinds_audited": 2,
               "digest_match": True, "ledger_digest_match": True, "applied": 0, "recounted": 10, "redelivered": 10,
               "duplicates": 10, "checkpoints_restored": True, "time_to_recover_s": 0.2, "restarts": {}}
    options = OffsetRollbackOptions(by=5)
    assert _failed(judge_offset_rollback(figures, options)) == []
    assert _failed(judge_offset_rollback({**figures, "recounted": 9}, options)) == ["every re-delivery counted"]
    assert _failed(judge_offset_rollback({**figures, "digest_match": False}, options)) == ["zero state change"]


def _fault_figures(**overrides: Any) -> dict[str, Any]:
    figures: dict[str, Any] = {
        "faults_injected": 2, "errors": [], "restarts": {"partition:t:0": 2}, "root_restarts": {}, "escalations": {},
        "intensity": "10/10.0s", "intensity_exceeded": False, "time_to_recover_s": 0.5, "events_sent": 10,
        "applied": 10, "duplicates": 3, "anomalies": 0, "digest_match": None,
    }
    return {**figures, **overrides}


def test_actor_fault_verdict_follows_the_strategy() -> None:
    partition = ActorFaultOptions(target="partition", times=2)
    assert _failed(judge_actor_fault(_fault_figures(), partition, ["partition:t:0"], "")) == []
    spread = _fault_figures(restarts={"partition:t:0": 1, "partition:t:1": 1})
    assert _failed(judge_actor_fault(spread, partition, ["partition:t:0", "partition:t:1"], "")) == []
    collateral = _fault_figures(restarts={"partition:t:0": 2, "partition:t:1": 1})
    assert _failed(judge_actor_fault(collateral, partition, ["partition:t:0"], "")) == ["supervised restarts per strategy"]
    missed = _fault_figures(intensity_exceeded=True)
    assert _failed(judge_actor_fault(missed, partition, ["partition:t:0"], "")) == [
        "escalation exactly when the intensity is exceeded"]
    writer = ActorFaultOptions(target="store-writer", times=1)
    rest = {n: 1 for n in ("store-writer", "checkpoint", "query", "partitions", "health", "drills")}
    assert _failed(judge_actor_fault(_fault_figures(faults_injected=1, restarts={}, root_restarts=rest), writer,
                                     ["store-writer"], "")) == []
    partial = {**rest, "health": 0}
    assert _failed(judge_actor_fault(_fault_figures(faults_injected=1, root_restarts=partial), writer,
                                     ["store-writer"], "")) == ["supervised restarts per strategy"]


def test_a_report_passes_only_when_every_check_holds() -> None:
    report = DrillReport("x", {"a": 1, "ok": True, "nested": {"b": 2}}, [Check("one", True, "d1"), Check("two", False, "d2")])
    assert not report.passed
    text = report.render()
    assert text.splitlines()[0] == "drill x: FAIL (1 of 2 checks failed: two)"
    assert "a=1 ok=yes" in text and "nested" not in text.splitlines()[1] and "[FAIL] two: d2" in text
    assert report.as_json()["verdict"] == "FAIL"


def test_pg_ctl_restarts_the_server_with_the_options_it_ran_with(tmp_path: Any) -> None:
    from ctxplane.actors.drills.db_outage import _server_options

    (tmp_path / "postmaster.opts").write_text(
        '/usr/lib/postgresql/15/bin/postgres "-D" "/tmp/pg x/data" "-p" "55477" "-k" "/tmp/pg x" "-c" "fsync=off"\n')
    assert _server_options(str(tmp_path)) == "-p 55477 -k '/tmp/pg x' -c fsync=off"
