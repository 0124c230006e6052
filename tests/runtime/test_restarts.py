"""The one restart and retry policy (runtime/kernel/restarts.py): Retry over a Backoff, full jitter,
the restart window; pure, no loop."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ctxplane.runtime.kernel import Backoff, Intensity, RestartWindow, Retry


@given(attempt=st.integers(0, 200), seed=st.integers())
def test_full_jitter_draws_below_the_exponential_cap(attempt: int, seed: int) -> None:
    backoff = Backoff(initial=0.1, maximum=5.0, full_jitter=True)
    delay = backoff.delay(attempt, random.Random(seed))
    assert 0.0 <= delay <= min(0.1 * 2.0**attempt, 5.0)
    assert delay == random.Random(seed).uniform(0, min(0.1 * 2.0**min(attempt, 100), 5.0))


def test_a_retry_follows_its_backoff_and_says_when_no_attempt_is_left() -> None:
    backoff = Backoff(initial=0.1, maximum=1.0, jitter=0.0)
    retry = Retry(backoff, attempts=3)
    assert not retry.exhausted
    assert retry.failed() == pytest.approx(0.1) and not retry.exhausted
    assert retry.failed() == pytest.approx(0.2) and not retry.exhausted
    retry.failed()
    assert retry.exhausted and retry.failures == 3
    unbounded = Retry(backoff)
    assert [unbounded.failed() for _ in range(6)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert not unbounded.exhausted
    with pytest.raises(ValueError, match="attempts must be >= 1"):
        Retry(backoff, attempts=0)


def test_a_retry_starts_again_after_the_failed_thing_stayed_up_reset_after() -> None:
    retry = Retry(Backoff(initial=0.1, maximum=5.0, jitter=0.0, reset_after=10.0))
    assert [retry.failed(up_for=1.0) for _ in range(3)] == pytest.approx([0.1, 0.2, 0.4])
    assert retry.failed(up_for=10.0) == pytest.approx(0.1)  # healthy for reset_after: from initial
    assert retry.failed() == pytest.approx(0.2)


def test_a_retry_draws_its_jitter_from_the_rng_it_is_given() -> None:
    backoff = Backoff(initial=0.1, maximum=5.0, jitter=0.2)
    one, two = Retry(backoff, rng=random.Random(7)), Retry(backoff, rng=random.Random(7))
    assert [one.failed() for _ in range(5)] == [two.failed() for _ in range(5)]


def test_the_restart_window_exceeds_after_max_restarts_within_the_period() -> None:
    window = RestartWindow(Intensity(max_restarts=2, period=10.0))
    assert not window.charge(0.0) and not window.charge(1.0)
    assert window.charge(2.0) and len(window) == 3
    # Restarts older than the period drop out.
    assert not window.charge(11.5) and len(window) == 2
