"""The file bus's change feed (inotify): which partitions it names, and what it leaves out."""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import pytest

from ctxplane.runtime.bus import FileBus
from ctxplane.runtime.bus.changes import ChangeFeed

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux's")

TOPIC = "fp.bus.context.arrival_events.v1"
LATER = "fp.bus.traffic.fraud.v1"
# A guard against a hang only: every wait below is for an event that was already caused.
GUARD_S = 10.0


async def _wait(feed: ChangeFeed) -> set[tuple[str, int]]:
    with anyio.fail_after(GUARD_S):
        return await feed.wait()


def _feed(bus: FileBus, *topics: str) -> ChangeFeed:
    feed = bus.change_feed(topics)
    if feed is None:
        pytest.skip("no inotify instance could be had here (per-user limit)")
    return feed


async def test_an_append_names_its_partition_and_a_topic_created_later_is_watched(tmp_path: Path) -> None:
    bus = FileBus(tmp_path)
    await bus.create_topic(TOPIC, 2)
    feed = _feed(bus, TOPIC, LATER)
    try:
        # The partitions that existed before the watch: reported once, so nothing written before is missed.
        assert await _wait(feed) == {(TOPIC, 0), (TOPIC, 1)}
        await bus.publish_many(TOPIC, [("k", {"n": 1})], partitions=2)  # also rewrites head.json: not a partition
        changed = await _wait(feed)
        assert len(changed) == 1 and changed <= {(TOPIC, 0), (TOPIC, 1)}
        # A topic that did not exist when the feed opened: its directory's creation adds the watch.
        (tmp_path / LATER).mkdir()
        (tmp_path / LATER / "partition=3.jsonl").write_bytes(b"{}\n")
        assert await _wait(feed) == {(LATER, 3)}
        # A topic no plane reads is not watched.
        (tmp_path / "other").mkdir()
        (tmp_path / "other" / "partition=0.jsonl").write_bytes(b"{}\n")
        (tmp_path / LATER / "partition=3.jsonl").open("ab").write(b"{}\n")
        assert await _wait(feed) == {(LATER, 3)}
    finally:
        feed.close()
        feed.close()  # idempotent
        await bus.aclose()


async def test_no_bus_root_means_no_feed_and_readers_poll(tmp_path: Path) -> None:
    assert FileBus(tmp_path / "absent").change_feed([TOPIC]) is None
