"""Staying cheap while idle without getting slow: a `ctxplane run` whose partition actors poll only
every ten minutes still applies a record published to the file bus at once, because the bus
watcher's change notification (inotify) wakes the partition actor. The idle CPU figure itself is a
benchmark (ops/bench/idle_bench.py, docs/performance.md), not a test."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from ctxplane.runtime.client import Client
from tests.support.process import CtxplaneProcess, write_config
from tests.support.workload import ANCHOR_BASELINE, PINS, context_events, publish

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux's")

# So long that only a change notification can explain a record applied within a test's wait.
TEN_MINUTES_MS = 600_000


def test_a_record_published_to_an_idle_process_is_applied_on_notification(tmp_path: Path, sqlite_dsn: str) -> None:
    config = write_config(tmp_path, sqlite_dsn, features={"enabled": False},
                          ingest={"poll_interval_ms": TEN_MINUTES_MS, "idle_poll_max_ms": TEN_MINUTES_MS})
    eb = tmp_path / "eb"
    # Flow anchors on both anchor topics, so both topics' partition actors exist from the start.
    publish(eb, context_events(1) + context_events(2, anchor=ANCHOR_BASELINE), partitions=1)
    with CtxplaneProcess(config) as proc, Client(f"unix:{tmp_path / 'q.sock'}") as client:
        watch = proc.wait_for_event("idle partitions wake on")
        if watch["notification"] != "inotify":
            pytest.skip("no inotify instance could be had here (per-user limit)")

        def bound(flow: str) -> bool:
            """The flow's anchor is applied (a binding exists): waits for it up to 20 s."""
            answer = client.request({"op": "resolve_flow_binding", "pins": PINS, "flow_id": flow, "wait_ms": 20_000})
            return answer["status"] != "MISSING_BINDING"

        assert bound("flow-1") and bound("flow-2")  # read at start-up; the actors then wait ten minutes
        # Each anchor published now reaches its idle partition actor only through the notification.
        publish(eb, context_events(3)[2:], partitions=1)
        assert bound("flow-3")
        publish(eb, context_events(4, anchor=ANCHOR_BASELINE)[2:], partitions=1)
        assert bound("flow-4")
