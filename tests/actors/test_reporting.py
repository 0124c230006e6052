"""The progress figures and the summary of long work, from group-commit outcomes and a fake clock."""

from __future__ import annotations

import io
from collections import Counter

from ctxplane.actors.ingest.apply import ApplyOutcome
from ctxplane.actors.operate.reporting import WorkReporter, human_summary

PLANES = {"ctx": "join", "traffic": "features"}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _outcome(topic: str, **counts: int) -> ApplyOutcome:
    outcome = ApplyOutcome()
    outcome.counts.update(counts)
    outcome.partition_counts.update({(topic, 0, name): n for name, n in counts.items()})
    return outcome


def test_a_window_s_remaining_and_eta_follow_the_commits() -> None:
    clock = Clock()
    reporter = WorkReporter("replay", PLANES, stream=io.StringIO(), tty=False, clock=clock)
    reporter.start()
    reporter.plan(Counter({"join": 300, "features": 100}))
    clock.now += 2.0
    reporter.committed(_outcome("ctx", applied=90, duplicate=10))
    fields = reporter.progress()
    assert (fields["events"], fields["events_per_s"], fields["remaining"]) == (100, 50, {"features": 100, "join": 200})
    assert (fields["remaining_total"], fields["eta_s"]) == (300, 6.0)


def test_rejections_are_split_by_reason_and_late_annotations_counted_apart() -> None:
    clock = Clock()
    reporter = WorkReporter("run --once", PLANES, stream=io.StringIO(), tty=False, clock=clock)
    reporter.start()
    outcome = _outcome("ctx", applied=5, rejected=2, payload_hash_mismatch=1)
    outcome.failures.update({("join", "ctx", 0, "ENVELOPE_MISSING"): 2, ("join", "ctx", 0, "INTAKE_PAYLOAD_HASH_MISMATCH"): 1,
                             ("join", "ctx", 0, "LATE_CONTEXT_EVENT"): 1, ("join", "ctx", 0, "FLOW_BINDING_CONFLICT"): 2})
    reporter.committed(outcome)
    clock.now += 4.0
    summary = reporter.summary(completed=True)
    assert summary["rejected"] == 3 and summary["late"] == 1
    assert summary["rejected_by_reason"] == {"ENVELOPE_MISSING": 2, "INTAKE_PAYLOAD_HASH_MISMATCH": 1}
    assert (summary["seconds"], summary["events_per_s"]) == (4.0, 2)
    assert human_summary(summary) == ("run --once: 8 events in 4.0 s, 2 events/s: applied 5; duplicates 0; "
                                      "rejected 3 (ENVELOPE_MISSING 2, INTAKE_PAYLOAD_HASH_MISMATCH 1); late 1")


def test_an_unknown_lag_gives_no_eta() -> None:
    reporter = WorkReporter("run --once", PLANES, stream=io.StringIO(), tty=False, clock=Clock())
    reporter.start()
    reporter._lag = {"join": 10, "features": None}  # the bus cannot count one plane's lag (Kinesis)
    fields = reporter.progress()
    assert (fields["remaining_total"], fields["eta_s"]) == (None, None)
