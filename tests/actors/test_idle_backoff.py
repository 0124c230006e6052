"""The idle partition actor's back-off: doubling from the poll interval to the ceiling, reset by records."""

from __future__ import annotations

import pytest

from ctxplane.actors.ingest.wakeup import IdleBackoff


def test_each_empty_read_doubles_the_wait_up_to_the_ceiling_and_records_reset_it() -> None:
    backoff = IdleBackoff(0.05, 1.0)
    assert [backoff.idle() for _ in range(7)] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    backoff.reset()
    assert [backoff.idle() for _ in range(2)] == [0.05, 0.1]


def test_a_ceiling_below_the_interval_means_no_back_off() -> None:
    backoff = IdleBackoff(2.0, 1.0)
    assert [backoff.idle() for _ in range(3)] == [2.0, 2.0, 2.0]
    with pytest.raises(ValueError):
        IdleBackoff(0, 1.0)
