"""Crash consistency: `kill -9` of a real `ctxplane run` at random moments during ingest (docs/performance.md §Reliability).

The check after the drill is the same as after every drill: the state digest and the ledger digest
equal those of a clean single pass over the same bus, no event is lost (the dedupe registry holds
every distinct event), and the duplicate counter explains every re-delivery — exactly the records
the bus carries twice, nothing more. An apply whose effects and checkpoint were not one transaction
would fail this: a kill between the two re-applies the batch on restart (extra duplicates) or skips
it (lost events).

Kill moments are conditions on durable state, not sleeps: each incarnation is killed once the
committed checkpoints (polled read-only) pass a random target between where it started and the end,
plus a random jitter of up to 80 ms so the kill lands anywhere in the commit cycle.
Reproduce a failure with ``CTXPLANE_CHAOS_SEED``; soak with ``CTXPLANE_SOAK_KILLS=N`` or ``-m slow``.
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

from ctxplane.actors.operate.demo_workload import (
    DEMO_TOPICS,
    TOPIC_ARRIVAL_EVENTS,
    write_demo_bus,
)
from ctxplane.actors.operate.digest import ledger_digest_program, state_digest_program
from ctxplane.config.settings import load_settings
from ctxplane.runtime.store import open_store
from tests.support.process import CtxplaneProcess, ctxplane, write_config
from tests.support.workload import append_raw, context_events

# Kills per drill in CI; the soak variant takes CTXPLANE_SOAK_KILLS (default 40).
CI_KILLS = int(os.environ.get("CTXPLANE_SOAK_KILLS", "5"))
# Small reads and group commits: many transactions, so kills land between and inside them.
CRASH_ENV = {"CTXPLANE__INGEST__BATCH_MAX_RECORDS": "100", "CTXPLANE__INGEST__GROUP_COMMIT_MAX_RECORDS": "400"}
# Lines of partition 0 of every topic that the bus delivers a second time (a producer retry).
REDELIVERED = 40


def _config(directory: Path, eb: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    return write_config(directory, f"sqlite:///{directory / 'store.sqlite'}", bus={"root": str(eb)})


def _sql(config: Path, sql: str) -> list[tuple[Any, ...]]:
    """Query the store read-only (safe while a `ctxplane run` writes to it)."""
    conn = sqlite3.connect(f"file:{config.parent / 'store.sqlite'}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def _committed(config: Path) -> int:
    """Offsets covered by the committed checkpoints (0 before the store or its schema exists)."""
    try:
        return int(_sql(config, "SELECT coalesce(sum(CAST(next_offset AS INTEGER)), 0) FROM checkpoints")[0][0])
    except sqlite3.OperationalError:
        return 0


def _wait_committed(config: Path, proc: CtxplaneProcess, at_least: int, timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        committed = _committed(config)
        if committed >= at_least:
            return committed
        assert proc.proc is not None and proc.proc.poll() is None, "\n".join(proc.lines[-20:])
        time.sleep(0.002)  # sync-ok: polling a durable condition; the interval only bounds the kill's latency
    raise AssertionError(f"fewer than {at_least} offsets committed after {timeout} s")


def _digests(config: Path) -> tuple[str, str]:
    """(state digest, ledger digest): the programs `ctxplane digest [--ledger]` run, in process."""

    async def digests() -> tuple[str, str]:
        async with await open_store(load_settings(config).store) as store:
            return await store.read(state_digest_program()), await store.read(ledger_digest_program())

    return anyio.run(digests)


def _counters(config: Path) -> dict[str, int]:
    return dict(_sql(config, "SELECT name, sum(value) FROM intake_counters GROUP BY name"))


def _checkpoints(config: Path) -> list[tuple[Any, ...]]:
    return _sql(config, "SELECT topic, partition_id, next_offset, offset_kind FROM checkpoints ORDER BY topic, partition_id")


def _bus(eb: Path) -> tuple[int, int]:
    """(records on the bus, distinct events among them)."""
    records, events = 0, set()
    for path in eb.glob("*/partition=*.jsonl"):
        for line in path.read_bytes().splitlines():
            if line.strip():
                records += 1
                envelope = orjson.loads(line)["payload"]
                events.add((envelope["event_type"], envelope["event_id"]))
    return records, len(events)


def _once(config: Path, env: dict[str, str] | None = None) -> None:
    result = ctxplane("run", "--config", str(config), "--once", env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]


def _kill_drill(tmp_path: Path, *, flows: int, kills: int) -> None:
    seed = int(os.environ.get("CTXPLANE_CHAOS_SEED", random.randrange(2**32)))
    rng = random.Random(seed)
    eb = tmp_path / "eb"
    write_demo_bus(eb, flows, partitions=2)
    for topic in DEMO_TOPICS:  # the bus re-delivers the head of partition 0 of every topic
        head = b"".join((eb / topic / "partition=0.jsonl").read_bytes().splitlines(keepends=True)[:REDELIVERED])
        append_raw(eb, topic, 0, head)
    records, distinct = _bus(eb)
    crashed = _config(tmp_path / "crashed", eb)

    killed_at = []
    for left in range(kills, 0, -1):
        proc = CtxplaneProcess(crashed, env=CRASH_ENV).start()
        try:
            done = _committed(crashed)
            # A random point in the first 1/(left+1) of what remains: every kill lands before the
            # end, whatever the draws, and the next incarnation still has ingest to be killed in.
            target = done + rng.randint(1, max(1, (records - done) // (left + 1)))
            _wait_committed(crashed, proc, target)
            # The condition fires just after a commit; a random extra moment spreads the kills over
            # the whole read/classify/apply/commit cycle (mid-transaction included).
            time.sleep(rng.uniform(0.0, 0.08))  # sync-ok: chaos jitter, nothing waits on it
        finally:
            proc.kill()
        killed_at.append(_committed(crashed))
    context = f"seed={seed} kills at committed offsets {killed_at} of {records}"
    assert len(killed_at) == kills and killed_at[-1] < records, context  # every kill hit a live ingest
    _once(crashed)

    clean = _config(tmp_path / "clean", eb)
    _once(clean)
    assert _digests(crashed) == _digests(clean), context
    cli = ctxplane("digest", "--config", str(crashed))
    assert cli.returncode == 0 and cli.stdout.strip() == _digests(clean)[0], context
    assert _checkpoints(crashed) == _checkpoints(clean), context
    # No event lost, none applied twice, and the duplicate counter is exactly the bus's re-deliveries.
    assert _sql(crashed, "SELECT count(*) FROM intake_dedupe") == [(distinct,)], context
    assert records - distinct == len(DEMO_TOPICS) * REDELIVERED
    assert _counters(crashed) == _counters(clean) == {"applied": distinct, "duplicate": records - distinct}, context


def test_kill_9_during_ingest_then_restart_converges_to_the_clean_pass(tmp_path: Path) -> None:
    _kill_drill(tmp_path, flows=3000, kills=CI_KILLS)


@pytest.mark.slow
def test_kill_9_soak(tmp_path: Path) -> None:
    _kill_drill(tmp_path, flows=20_000, kills=int(os.environ.get("CTXPLANE_SOAK_KILLS", "40")))


def test_a_half_written_last_line_is_consumed_only_once_complete(tmp_path: Path) -> None:
    eb = tmp_path / "eb"
    write_demo_bus(eb, 40, partitions=2)
    partition = eb / TOPIC_ARRIVAL_EVENTS / "partition=0.jsonl"
    complete = partition.read_bytes().count(b"\n")
    envelope = context_events(9_999)[0][1]
    line = orjson.dumps({"partition_key": "m-1", "payload": envelope, "published_at_utc": "2026-02-07T05:00:00.000000Z"})
    cut = len(line) // 2
    append_raw(eb, TOPIC_ARRIVAL_EVENTS, 0, line[:cut])  # a producer crashed mid-write, or is slow
    config = _config(tmp_path / "store", eb)
    _once(config)
    checkpoint = f"SELECT next_offset FROM checkpoints WHERE topic = '{TOPIC_ARRIVAL_EVENTS}' AND partition_id = 0"
    assert _sql(config, checkpoint) == [(str(complete),)]
    seen = f"SELECT count(*) FROM intake_dedupe WHERE event_id = '{envelope['event_id']}'"
    assert _sql(config, seen) == [(0,)]
    at_the_cut = (f"SELECT count(*) FROM apply_failures WHERE topic = '{TOPIC_ARRIVAL_EVENTS}' AND partition_id = 0"
                  f" AND source_offset = '{complete}'")
    assert _sql(config, at_the_cut) == [(0,)]  # not ledgered as a junk record either
    append_raw(eb, TOPIC_ARRIVAL_EVENTS, 0, line[cut:] + b"\n")
    _once(config)
    assert _sql(config, checkpoint) == [(str(complete + 1),)]
    assert _sql(config, seen) == [(1,)]
    clean = _config(tmp_path / "clean", eb)
    _once(clean)
    assert _digests(config) == _digests(clean)
    assert _counters(config) == _counters(clean)
