"""The Metrics object: gauges from the health actor's positions, pre-created label sets."""

from __future__ import annotations

from prometheus_client import generate_latest

from ctxplane.actors.serve.metrics import Metrics
from ctxplane.runtime.kernel import Registry


def _text(metrics: Metrics) -> str:
    return generate_latest(metrics.registry).decode()


def _position(**extra: object) -> dict[str, object]:
    return {"plane": "join", "topic": "t", "partition": 3, "lag": None, "watermark_us": None,
            "last_commit_age_s": None, **extra}


def test_millis_behind_latest_is_a_per_shard_gauge_that_disappears_when_unknown() -> None:
    metrics = Metrics(Registry())
    series = 'ctxplane_kinesis_millis_behind_latest{partition="3",plane="join",topic="t"}'
    metrics.on_positions([_position(behind_ms=1234)])
    assert f"{series} 1234.0" in _text(metrics)
    metrics.on_positions([_position(behind_ms=0)])
    assert f"{series} 0.0" in _text(metrics)
    metrics.on_positions([_position(behind_ms=None)])  # not read lately (lease moved): no stale value
    assert series not in _text(metrics)
    metrics.on_positions([_position()])  # the file bus never has one
    assert "ctxplane_kinesis_millis_behind_latest{" not in _text(metrics)


def test_a_partition_seen_later_gets_its_counter_series_at_zero() -> None:
    metrics = Metrics(Registry())
    assert 'topic="t"' not in _text(metrics)
    metrics.on_positions([_position()])
    text = _text(metrics)
    assert 'ctxplane_events_total{outcome="applied",partition="3",plane="join",topic="t"} 0.0' in text
    assert 'ctxplane_apply_failures_total{kind="hard",plane="join",reason="FLOW_BINDING_CONFLICT",topic="t"} 0.0' in text


def test_readiness_needs_a_fresh_verdict_a_store_and_partitions() -> None:
    import time

    from ctxplane.actors.serve.metrics import READY_STALE_S

    metrics = Metrics(Registry())
    assert metrics.readiness() == (False, {"ready": False, "reasons": ["STARTING"]})
    metrics.on_readiness(store_available=True, partitions_assigned=4, checked_at_utc="2026-12-02T00:00:00.000000Z")
    ready, detail = metrics.readiness()
    assert ready and detail["partitions_assigned"] == 4 and detail["reasons"] == []
    assert metrics.readiness(now=time.monotonic() + READY_STALE_S + 1)[1]["reasons"] == ["HEALTH_NOT_REFRESHED"]
    metrics.on_readiness(store_available=False, partitions_assigned=0, checked_at_utc="2026-12-02T00:00:01.000000Z")
    assert metrics.readiness() == (False, {"ready": False, "reasons": ["STORE_UNAVAILABLE", "NO_PARTITIONS_ASSIGNED"],
                                           "store_available": False, "partitions_assigned": 0,
                                           "checked_at_utc": "2026-12-02T00:00:01.000000Z"})
