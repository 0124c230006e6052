"""The lateness fold: late iff older than the running watermark minus the allowed lateness; the watermark never moves back."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from ctxplane.contracts.classes import Plane
from ctxplane.contracts.intake import Accepted, Ignored, Rejected, SourceRef, Verdict
from ctxplane.contracts.lateness import fold_lateness
from ctxplane.contracts.reasons import Reason

ALLOWED = 120_000_000  # 120 s, the default allowed lateness
T0 = 1_770_440_580_000_000  # 2026-02-07T05:03:00Z


def _accepted(ts_us: int, offset: int = 0) -> Accepted:
    return Accepted(
        plane=Plane.JOIN, source=SourceRef("t", 0, str(offset), "file_line"), event_id=f"e{offset}",
        event_type="arrival_events", event_class="arrival_events", ts_utc="", ts_us=ts_us,
        platform_run_id="run", scenario_run_id="scn", pins={}, pins_id="p", payload={}, payload_hash="h",
    )


def _late_flags(verdicts: tuple[Verdict, ...]) -> list[tuple[bool, int | None]]:
    return [(v.late, v.watermark_us) for v in verdicts if isinstance(v, Accepted)]


def test_on_time_events_pass_unchanged_and_advance_the_watermark() -> None:
    verdicts = [_accepted(T0, 0), _accepted(T0 + 5, 1), _accepted(T0 + 3, 2)]
    out, watermark = fold_lateness(verdicts, None, ALLOWED)
    assert out == tuple(verdicts)
    assert all(a is b for a, b in zip(out, verdicts, strict=True))
    assert watermark == T0 + 5


def test_an_event_exactly_at_the_bound_is_on_time() -> None:
    out, watermark = fold_lateness([_accepted(T0 - ALLOWED)], T0, ALLOWED)
    assert _late_flags(out) == [(False, None)]
    assert watermark == T0


def test_an_event_past_the_bound_is_late_and_carries_the_watermark_it_was_judged_against() -> None:
    late = _accepted(T0 - ALLOWED - 1, 1)
    out, watermark = fold_lateness([_accepted(T0, 0), late, _accepted(T0 + 10, 2)], None, ALLOWED)
    assert _late_flags(out) == [(False, None), (True, T0), (False, None)]
    assert out[1] == replace(late, late=True, watermark_us=T0)
    assert late.late is False  # the input verdict is not changed
    assert watermark == T0 + 10


def test_the_watermark_never_goes_backward() -> None:
    out, watermark = fold_lateness([_accepted(T0 - 10), _accepted(T0 - ALLOWED * 5)], T0, ALLOWED)
    assert watermark == T0
    assert _late_flags(out) == [(False, None), (True, T0)]


def test_with_no_watermark_the_first_event_is_on_time_and_sets_it() -> None:
    out, watermark = fold_lateness([_accepted(T0 - 10**12)], None, ALLOWED)
    assert _late_flags(out) == [(False, None)]
    assert watermark == T0 - 10**12


def test_no_accepted_event_leaves_the_watermark_and_the_verdicts_alone() -> None:
    source = SourceRef("t", 0, "0", "file_line")
    verdicts: list[Verdict] = [Rejected(source, Reason.PAYLOAD_INVALID, {}), Ignored(source, "decision_response")]
    assert fold_lateness(verdicts, None, ALLOWED) == (tuple(verdicts), None)
    assert fold_lateness(verdicts, T0, ALLOWED) == (tuple(verdicts), T0)
    assert fold_lateness([], T0, ALLOWED) == ((), T0)


def test_zero_allowed_lateness_marks_anything_older_than_the_watermark() -> None:
    out, _ = fold_lateness([_accepted(T0, 0), _accepted(T0, 1), _accepted(T0 - 1, 2)], None, 0)
    assert _late_flags(out) == [(False, None), (False, None), (True, T0)]


@given(
    start=st.none() | st.integers(-10**6, 10**6),
    allowed=st.integers(0, 1000),
    items=st.lists(st.none() | st.integers(-10**6, 10**6), max_size=60),
)
def test_fold_is_the_running_max_and_late_iff_below_it_minus_allowed(
    start: int | None, allowed: int, items: list[int | None]
) -> None:
    source = SourceRef("t", 0, "0", "file_line")
    # None stands for a rejected record, which neither is late nor moves the watermark.
    verdicts: list[Verdict] = [
        _accepted(ts, i) if ts is not None else Rejected(source, Reason.PAYLOAD_INVALID, {}) for i, ts in enumerate(items)
    ]
    out, watermark = fold_lateness(verdicts, start, allowed)

    stamps = [ts for ts in items if ts is not None]
    assert watermark == max([start, *stamps] if start is not None else stamps, default=None)
    assert len(out) == len(verdicts)
    running = start
    for before, after in zip(verdicts, out, strict=True):
        if not isinstance(before, Accepted):
            assert after is before
            continue
        assert isinstance(after, Accepted)
        late = running is not None and before.ts_us < running - allowed
        assert after.late is late
        assert after.watermark_us == (running if late else None)
        if late:
            assert replace(after, late=False, watermark_us=None) == before
        else:
            assert after is before
        running = before.ts_us if running is None else max(running, before.ts_us)
