"""`ctxplane run` over Kinesis (the loopback emulator): both planes end to end, resharding, and the
single-process rule for SQLite.

The yardstick is the state digest: the same events give the same digest over the file bus and over
Kinesis, on SQLite (one process, lineage gating) and on PostgreSQL (leases), and across a shard split
in the middle of the stream.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from ctxplane.actors.operate.demo_workload import (
    TOPIC_ARRIVAL_EVENTS,
    TOPIC_TRAFFIC_BASELINE,
    generate,
)
from ctxplane.runtime.bus import KinesisBus, is_drained
from tests.support.kinesis import (
    AWS_ENV,
    file_bus_digest,
    kinesis_config,
    kinesis_endpoint,
    publish_kinesis,
    stream_names,
)
from tests.support.process import CtxplaneProcess, ctxplane, write_config
from tests.support.stores import fresh_dsn

pytestmark = pytest.mark.kinesis

FLOWS = 80
SECRET = "s3cr3t-kinesis-never-logged"


@pytest.fixture(scope="module")
def workload() -> dict[str, list[dict[str, Any]]]:
    return generate(FLOWS)


@pytest.fixture(scope="module")
def reference(workload: dict[str, list[dict[str, Any]]], tmp_path_factory: pytest.TempPathFactory) -> str:
    return file_bus_digest(tmp_path_factory.mktemp("reference"), workload)


def _digest(config: Path) -> str:
    result = ctxplane("digest", "--config", str(config))
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_both_planes_over_kinesis_give_the_file_bus_digest(
    backend: str, tmp_path: Path, workload: dict[str, list[dict[str, Any]]], reference: str
) -> None:
    endpoint = kinesis_endpoint()
    streams = stream_names(list(workload))
    await publish_kinesis(endpoint, streams, workload, shards=2)
    dsn = await fresh_dsn(backend, tmp_path)
    config = kinesis_config(tmp_path, dsn, endpoint, streams,
                            leases={"duration_s": 3, "renew_every_s": 0.5})
    env = {**AWS_ENV, "AWS_SECRET_ACCESS_KEY": SECRET}
    process = CtxplaneProcess(config, "--once", env=env).start()
    assert await anyio.to_thread.run_sync(process.wait, 60) == 0, "\n".join(process.lines[-20:])
    assert _digest(config) == reference
    modes = {e.get("mode") for e in process.events() if e.get("event") == "partition assigner started"}
    assert modes == ({"local"} if backend == "sqlite" else {"leased"})
    # This DSN leaves idle_in_transaction_session_timeout off: the leased process says so.
    warned = any(e.get("event", "").startswith("idle_in_transaction_session_timeout is off") for e in process.events())
    assert warned == (backend == "postgresql")
    assert not any(SECRET in line for line in process.lines)


def _sql(path: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    except sqlite3.OperationalError:
        return []  # schema not created yet
    finally:
        conn.close()


async def test_a_shard_split_mid_stream_applies_every_record_once_parent_before_child(
    tmp_path: Path, workload: dict[str, list[dict[str, Any]]], reference: str
) -> None:
    endpoint = kinesis_endpoint()
    streams = stream_names(list(workload))
    half = {topic: envs[: len(envs) // 2] for topic, envs in workload.items()}
    rest = {topic: envs[len(envs) // 2 :] for topic, envs in workload.items()}
    await publish_kinesis(endpoint, streams, half, shards=1)
    db = tmp_path / "store.sqlite"
    # Small batches: the parent still has a backlog when it is split, so its children must wait.
    config = kinesis_config(tmp_path, f"sqlite:///{db}", endpoint, streams, ingest={"batch_max_records": 5})
    split = (TOPIC_ARRIVAL_EVENTS, TOPIC_TRAFFIC_BASELINE)
    with CtxplaneProcess(config, env=AWS_ENV) as process:
        deadline = time.monotonic() + 30
        while not _sql(db, "SELECT 1 FROM checkpoints"):  # ingest has begun
            assert time.monotonic() < deadline, "\n".join(process.lines[-20:])
            await anyio.sleep(0.02)  # sync-ok: polling a condition with a deadline
        async with KinesisBus(endpoint_url=endpoint, region="us-east-1", streams=streams) as bus:
            client = await bus._calls.client()
            for topic in split:
                await client.split_shard(StreamName=streams[topic], ShardToSplit="shardId-000000000000",
                                         NewStartingHashKey=str(2**127))
            lineage = {topic: await bus.shards(topic) for topic in split}
        at_split = {(t, p): o for t, p, o in _sql(db, "SELECT topic, partition_id, next_offset FROM checkpoints")}
        # The gate is exercised: some parent still had a backlog when its children opened.
        assert any(not is_drained(lineage[t][0], at_split.get((t, 0))) for t in split)
        await publish_kinesis(endpoint, streams, rest, shards=1)
        total = sum(len(envs) for envs in workload.values())
        samples = 0
        while True:
            # Invariant, sampled while ingest runs: a child shard has a committed checkpoint only
            # once its parent's committed checkpoint is drained.
            rows = _sql(db, "SELECT topic, partition_id, next_offset FROM checkpoints")
            committed = {(t, p): o for t, p, o in rows}
            for topic in split:
                for child in (1, 2):
                    if (topic, child) in committed:
                        samples += 1
                        assert is_drained(lineage[topic][0], committed.get((topic, 0))), (topic, committed)
            if _sql(db, "SELECT count(*) FROM intake_dedupe")[0][0] == total:
                break
            assert time.monotonic() < deadline + 30, "\n".join(process.lines[-20:])
            await anyio.sleep(0.02)  # sync-ok: polling a condition with a deadline
        assert process.stop() == 0
    assert samples > 0
    counters = dict(_sql(db, "SELECT name, sum(value) FROM intake_counters GROUP BY name"))
    assert counters.get("applied") == total and not counters.get("duplicate")  # every record exactly once
    from_children = _sql(db, "SELECT count(*) FROM intake_dedupe WHERE partition_id IN (1, 2)")[0][0]
    assert from_children > 0
    released = [e for e in process.events() if e.get("event") == "child shard released: its parents are drained"]
    assert {(e["topic"], e["partition"]) for e in released} == {(t, c) for t in split for c in (1, 2)}
    assert _digest(config) == reference


def test_a_second_run_on_the_same_sqlite_store_exits_1(tmp_path: Path) -> None:
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'store.sqlite'}")
    with CtxplaneProcess(config):
        second = ctxplane("run", "--config", str(config), timeout=30)
    assert second.returncode == 1
    lines = second.stderr.strip().splitlines()
    assert lines[-1].startswith("ctxplane: another ctxplane process is running on ")
    assert "SQLite deployments are single-process" in lines[-1] and "Traceback" not in second.stderr


def test_leases_on_sqlite_are_refused_with_exit_2(tmp_path: Path) -> None:
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'store.sqlite'}", leases={"enabled": True})
    result = ctxplane("run", "--config", str(config), timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "ctxplane: leases.enabled: partition leases need a PostgreSQL store (SQLite deployments are single-process)"
    )


async def test_millis_behind_latest_is_exported_per_shard_and_reported_in_health(
    tmp_path: Path, workload: dict[str, list[dict[str, Any]]]
) -> None:
    import re
    import socket
    import urllib.request

    from ctxplane.runtime.client import AsyncClient

    endpoint = kinesis_endpoint()
    streams = stream_names(list(workload))
    await publish_kinesis(endpoint, streams, workload, shards=2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = kinesis_config(tmp_path, f"sqlite:///{tmp_path / 'store.sqlite'}", endpoint, streams,
                            metrics={"listen": f"127.0.0.1:{port}"})
    gauge = re.compile(r'^ctxplane_kinesis_millis_behind_latest\{partition="(\d)",plane="(\w+)",topic="([^"]+)"\} (\S+)$', re.M)
    expected = {(topic, str(p)) for topic in workload for p in (0, 1)}
    with CtxplaneProcess(config, env=AWS_ENV) as process:
        async with AsyncClient(f"unix:{tmp_path / 'q.sock'}") as client:
            deadline = time.monotonic() + 60
            while True:  # every shard read to its tip: behind 0 for each, and health says so too
                text = await anyio.to_thread.run_sync(
                    lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode())
                seen = {(topic, p): float(v) for p, _plane, topic, v in gauge.findall(text)}
                health = (await client.request({"op": "health"}))["health"]
                behind = {(p["topic"], str(p["partition"])): p["behind_ms"] for p in health["partitions"]}
                if set(seen) == expected and set(seen.values()) == {0.0} and set(behind.values()) == {0}:
                    break
                assert time.monotonic() < deadline, (seen, behind, "\n".join(process.lines[-10:]))
                await anyio.sleep(0.1)  # sync-ok: polling a condition with a deadline
    assert set(behind) == expected
