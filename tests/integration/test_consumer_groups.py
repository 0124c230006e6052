"""Consumer-group tooling through the real CLI and a real store: `status --offline`
(positions and lag from the store and the bus, no process) and `checkpoint reset` (earliest / latest
/ a time / an offset, per topic or all partitions, `--dry-run`, forward only with `--allow-skip`,
refused while a process runs, audited).

The yardstick is the state digest: a backward move re-reads records that intake deduplicates (same
digest, every re-read counted as a duplicate); a forward move leaves records unapplied until a
reset brings them back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

from ctxplane.actors.operate.demo_workload import TOPIC_TRAFFIC_FRAUD, write_demo_bus
from ctxplane.actors.operate.digest import state_digest_program
from ctxplane.config.settings import load_settings
from ctxplane.runtime.store import Execute, open_store
from tests.support.process import CtxplaneProcess, ctxplane, write_config
from tests.support.stores import query_rows
from tests.support.workload import ARRIVAL, context_events

FLOWS = 40


def _ok(*args: str) -> str:
    result = ctxplane(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def _json(*args: str) -> Any:
    return json.loads(_ok(*args))


def _digest(config: Path) -> str:
    async def digest() -> str:
        async with await open_store(load_settings(config).store) as store:
            return await store.read(state_digest_program())

    return anyio.run(digest)


def _rows(dsn: str, sql: str) -> list[tuple[Any, ...]]:
    return query_rows(dsn, sql)


def _checkpoints(dsn: str) -> dict[tuple[str, int], str]:
    return {(t, int(p)): o for t, p, o in _rows(dsn, "SELECT topic, partition_id, next_offset FROM checkpoints")}


def _counters(dsn: str) -> dict[str, int]:
    return {name: int(n) for name, n in _rows(dsn, "SELECT name, sum(value) FROM intake_counters GROUP BY name")}


def _lines(eb: Path) -> dict[tuple[str, int], int]:
    """The bus contents: complete lines per (topic, partition)."""
    return {(path.parent.name, int(path.stem.split("=")[1])): path.read_bytes().count(b"\n")
            for path in eb.glob("*/partition=*.jsonl")}


def _audit(dsn: str) -> list[tuple[Any, ...]]:
    return _rows(dsn, "SELECT topic, partition_id, from_offset, to_offset, command, operator, reason, skipped"
                      " FROM checkpoint_rewinds ORDER BY topic, partition_id, rewound_at_utc")


def test_offline_status_lag_is_what_the_bus_holds_past_the_checkpoints(tmp_path: Path, store_dsn: str) -> None:
    eb = tmp_path / "eb"
    write_demo_bus(eb, FLOWS, partitions=2)
    config = write_config(tmp_path, store_dsn)
    _ok("run", "--config", str(config), "--once")
    consumed = _lines(eb)
    write_demo_bus(eb, FLOWS, partitions=2)  # the same events again: every partition doubles
    (eb / ARRIVAL[0] / "partition=0.jsonl").open("ab").write(b"\n")  # a blank line is a position too
    now = _lines(eb)

    report = _json("status", "--config", str(config), "--offline", "--json")  # no process runs
    assert report["offline"] is True and report["process"] == {"running": False, "detail": None, "leases": {}}
    rows = {(p["topic"], p["partition"]): p for p in report["partitions"]}
    assert set(rows) == set(now)
    for key, row in rows.items():
        assert (row["next_offset"], row["end"], row["lag"], row["unread"]) == (
            str(consumed[key]), str(now[key]), now[key] - consumed[key], True), key
        assert row["offset_kind"] == "file_line" and row["checkpoint_at_utc"] and row["watermark_ts_utc"]
    assert report["totals"]["lag"] == sum(now.values()) - sum(consumed.values())
    assert report["intake_counters"] == {"applied": sum(consumed.values())}
    ledger = report["ledger"]
    assert ledger["rows"] == sum(ledger["anomaly_counts"].values()) > 0  # the demo's conflicts
    assert ledger["rows"] == _rows(store_dsn, "SELECT count(*) FROM apply_failures")[0][0]

    text = _ok("status", "--config", str(config), "--offline")
    assert "process: not running" in text
    assert f"total lag: {report['totals']['lag']}; 12 of 12 partitions have unread records" in text
    refused = ctxplane("status", "--config", str(config), "--offline", "--check")
    assert refused.returncode == 2 and "no health to check" in refused.stderr

    _ok("run", "--config", str(config), "--once")
    after = _json("status", "--config", str(config), "--offline", "--json")
    assert {(p["topic"], p["partition"]): p["lag"] for p in after["partitions"]} == {key: 0 for key in now}
    assert after["intake_counters"] == {"applied": sum(consumed.values()), "duplicate": sum(consumed.values())}


def test_dry_run_changes_nothing_and_a_reset_to_earliest_rereads_with_zero_state_change(
    tmp_path: Path, store_dsn: str
) -> None:
    eb = tmp_path / "eb"
    write_demo_bus(eb, FLOWS, partitions=2)
    config = write_config(tmp_path, store_dsn)
    _ok("run", "--config", str(config), "--once")
    digest, checkpoints, counters = _digest(config), _checkpoints(store_dsn), _counters(store_dsn)
    lines = _lines(eb)

    plan = _json("checkpoint", "reset", "--config", str(config), "--all-partitions", "--to-earliest", "--dry-run",
                 "--json")
    assert plan["dry_run"] is True and plan["moved"] == 0 and plan["at_utc"] is None
    assert {(p["topic"], p["partition"]): (p["current"], p["target"], p["change"], p["redelivered"])
            for p in plan["partitions"]} == {key: (n, 0, "back", n) for key, n in lines.items()}
    text = _ok("checkpoint", "reset", "--config", str(config), "--all-partitions", "--to-earliest", "--dry-run")
    assert "(dry run: nothing changed)" in text and f"12 back ({sum(lines.values())} offsets read again)" in text
    assert (_digest(config), _checkpoints(store_dsn), _audit(store_dsn)) == (digest, checkpoints, [])

    missing = ctxplane("checkpoint", "reset", "--config", str(config), "--all-partitions", "--to-earliest")
    assert missing.returncode == 2 and "--reason is required" in missing.stderr
    done = _json("checkpoint", "reset", "--config", str(config), "--all-partitions", "--to-earliest",
                 "--reason", "rebuild the projections", "--operator", "alice", "--json")
    assert done["moved"] == 12 and done["at_utc"]
    assert set(_checkpoints(store_dsn).values()) == {"0"}
    assert _audit(store_dsn) == sorted(
        (topic, partition, str(n), "0", "reset", "alice", "rebuild the projections", 0)
        for (topic, partition), n in lines.items())
    _ok("run", "--config", str(config), "--once")
    assert _digest(config) == digest
    assert _checkpoints(store_dsn) == checkpoints
    assert _counters(store_dsn) == {**counters, "duplicate": sum(lines.values())}


def test_skipping_forward_needs_allow_skip_is_audited_and_a_reset_back_recovers(tmp_path: Path, store_dsn: str) -> None:
    eb = tmp_path / "eb"
    write_demo_bus(eb, FLOWS, partitions=2)
    (tmp_path / "reference").mkdir()
    reference = write_config(tmp_path / "reference", f"sqlite:///{tmp_path / 'reference.sqlite'}", bus={"root": str(eb)})
    _ok("run", "--config", str(reference), "--once")  # one clean pass over every record
    config = write_config(tmp_path, store_dsn)
    _ok("migrate", "--config", str(config))
    lines = _lines(eb)
    traffic = {key: n for key, n in lines.items() if key[0] == TOPIC_TRAFFIC_FRAUD}

    # No checkpoint yet: a reader would start at 0 (trim_horizon); the latest position skips them all.
    args = ("checkpoint", "reset", "--config", str(config), "--topic", TOPIC_TRAFFIC_FRAUD, "--all-partitions",
            "--to-latest", "--reason", "drop the fraud stream's backlog", "--operator", "bob")
    refused = ctxplane(*args)
    assert refused.returncode == 2, refused.stderr
    assert "refusing to skip forward past" in refused.stderr and "--allow-skip" in refused.stderr
    assert refused.stderr.count("\n") == 1
    assert (_checkpoints(store_dsn), _audit(store_dsn)) == ({}, [])
    plan = _json(*args, "--dry-run", "--json")  # a dry run shows the skip; it needs no flag
    assert {(p["topic"], p["partition"]): (p["checkpoint"], p["current"], p["target"], p["skipped"])
            for p in plan["partitions"]} == {key: (None, 0, n, n) for key, n in traffic.items()}

    _ok(*args, "--allow-skip")
    assert _audit(store_dsn) == [(topic, partition, "0", str(n), "reset", "bob", "drop the fraud stream's backlog", n)
                                 for (topic, partition), n in sorted(traffic.items())]
    assert _checkpoints(store_dsn) == {key: str(n) for key, n in traffic.items()}
    _ok("run", "--config", str(config), "--once")
    assert _counters(store_dsn) == {"applied": sum(lines.values()) - sum(traffic.values())}
    assert _digest(config) != _digest(reference)  # the skipped records were never applied

    _ok("checkpoint", "reset", "--config", str(config), "--topic", TOPIC_TRAFFIC_FRAUD, "--all-partitions",
        "--to-earliest", "--reason", "bring them back")
    _ok("run", "--config", str(config), "--once")
    assert _digest(config) == _digest(reference)
    assert _counters(store_dsn) == {"applied": sum(lines.values())}


def _timed_line(seq: int, published_at: str) -> bytes:
    topic, env = context_events(seq)[0]
    return orjson.dumps({"partition_key": f"m-{seq}", "payload": env, "published_at_utc": published_at}) + b"\n"


def test_to_time_picks_the_first_record_published_at_or_after_it(tmp_path: Path, sqlite_dsn: str) -> None:
    eb = tmp_path / "eb"
    path = eb / ARRIVAL[0] / "partition=0.jsonl"
    path.parent.mkdir(parents=True)
    _, bare = context_events(50)[0]
    path.write_bytes(b"".join([
        _timed_line(1, "2026-03-01T10:00:00.000000Z"),   # 0
        _timed_line(2, "2026-03-01T10:01:00.000000Z"),   # 1
        orjson.dumps(bare) + b"\n",                      # 2: a bare envelope line has no published_at_utc
        b"\n",                                           # 3: blank
        _timed_line(3, "2026-03-01T10:02:00.000000Z"),   # 4
        _timed_line(4, "2026-03-01T10:03:00.000000Z"),   # 5
        _timed_line(5, "2026-03-01T10:03:00.000000Z"),   # 6
        _timed_line(6, "2026-03-01T10:04:00.000000Z"),   # 7
    ]))
    config = write_config(tmp_path, sqlite_dsn, join_plane={"topics": [ARRIVAL[0]]}, features={"enabled": False})
    _ok("run", "--config", str(config), "--once")
    digest, counters = _digest(config), _counters(sqlite_dsn)
    assert _checkpoints(sqlite_dsn) == {(ARRIVAL[0], 0): "8"}

    def target(instant: str) -> tuple[int, int]:
        plan = _json("checkpoint", "reset", "--config", str(config), "--topic", ARRIVAL[0], "--partition", "0",
                     "--to-time", instant, "--dry-run", "--json")
        (only,) = plan["partitions"]
        return only["target"], only["untimed"]

    assert target("2026-03-01T10:02:00Z") == (4, 1)          # exactly a record's time: that record
    assert target("2026-03-01T11:02:30.5+01:00") == (5, 1)   # between two: the later (any RFC 3339 instant)
    assert target("2026-03-01T10:00:00.000001Z") == (1, 0)
    assert target("2026-03-01T09:00:00Z") == (0, 0)          # before every record: the earliest
    assert target("2026-03-01T12:00:00Z") == (8, 1)          # after every record: the end
    bad = ctxplane("checkpoint", "reset", "--config", str(config), "--topic", ARRIVAL[0], "--partition", "0",
                   "--to-time", "yesterday", "--dry-run")
    assert bad.returncode == 2 and "--to-time: timestamp 'yesterday' is not an RFC 3339 instant" in bad.stderr

    _ok("checkpoint", "reset", "--config", str(config), "--topic", ARRIVAL[0], "--partition", "0",
        "--to-time", "2026-03-01T10:02:00Z", "--reason", "re-read since 10:02")
    assert _checkpoints(sqlite_dsn) == {(ARRIVAL[0], 0): "4"}
    _ok("run", "--config", str(config), "--once")
    assert _digest(config) == digest
    assert _counters(sqlite_dsn) == {**counters, "duplicate": 4}  # lines 4..7: four records read again
    # The one-partition rewind writes the same audit trail, with who and why when given.
    _ok("checkpoint", "rewind", "--config", str(config), "--topic", ARRIVAL[0], "--partition", "0", "--by", "2",
        "--reason", "again", "--operator", "carol")
    assert _audit(sqlite_dsn) == [(ARRIVAL[0], 0, "8", "4", "reset", _audit(sqlite_dsn)[0][5], "re-read since 10:02", 0),
                                  (ARRIVAL[0], 0, "8", "6", "rewind", "carol", "again", 0)]


def test_reset_refuses_while_a_process_runs_and_a_dry_run_does_not(tmp_path: Path, store_dsn: str) -> None:
    eb = tmp_path / "eb"
    write_demo_bus(eb, 10, partitions=1)
    config = write_config(tmp_path, store_dsn)
    args = ("checkpoint", "reset", "--config", str(config), "--all-partitions", "--to-earliest", "--reason", "x")
    with CtxplaneProcess(config):  # the SQLite lock, and on either backend the query endpoint
        refused = ctxplane(*args)
        assert refused.returncode == 1, refused.stderr
        assert "refusing to reset checkpoints" in refused.stderr and "stop it first (SIGTERM or Ctrl-C" in refused.stderr
        assert refused.stderr.strip().count("\n") == 0
        assert ctxplane(*args, "--dry-run").returncode == 0
        status = _json("status", "--config", str(config), "--offline", "--json")
        assert status["process"]["running"] is True and status["process"]["detail"]
    assert _audit(store_dsn) == []
    assert ctxplane(*args).returncode == 0  # stopped: allowed
    assert len(_audit(store_dsn)) == len(_lines(eb))


@pytest.mark.parametrize("expires", ["9999-01-01T00:00:00.000000Z", "2000-01-01T00:00:00.000000Z"])
def test_a_live_partition_lease_refuses_a_reset_and_an_expired_one_does_not(
    tmp_path: Path, store_dsn: str, expires: str
) -> None:
    eb = tmp_path / "eb"
    write_demo_bus(eb, 10, partitions=1)
    config = write_config(tmp_path, store_dsn)
    _ok("run", "--config", str(config), "--once")

    def lease():  # type: ignore[no-untyped-def]
        yield Execute("INSERT INTO partition_leases (scope, topic, partition_id, owner, epoch, expires_at_utc)"
                      " VALUES (?, ?, ?, ?, ?, ?)", ("*", ARRIVAL[0], 0, "host-b:42", 3, expires))

    async def write() -> None:
        async with await open_store(load_settings(config).store) as store:
            await store.write(lease())

    anyio.run(write)
    result = ctxplane("checkpoint", "reset", "--config", str(config), "--all-partitions", "--to-earliest",
                      "--reason", "x")
    status = _json("status", "--config", str(config), "--offline", "--json")
    if expires.startswith("9999"):
        assert result.returncode == 1 and "holds partition leases on the store: host-b:42 (1)" in result.stderr
        assert status["process"]["running"] is True and status["process"]["leases"] == {"host-b:42": 1}
        assert _audit(store_dsn) == []
    else:
        assert result.returncode == 0, result.stderr
        assert status["process"]["running"] is False


@pytest.mark.kinesis
async def test_offline_status_over_kinesis_says_what_the_shard_says_and_reset_refuses(tmp_path: Path) -> None:
    from tests.support.kinesis import AWS_ENV, kinesis_config, kinesis_endpoint, publish_kinesis, stream_names

    endpoint = kinesis_endpoint()
    streams = stream_names([ARRIVAL[0]])
    first = [env for seq in range(1, 6) for topic, env in context_events(seq) if topic == ARRIVAL[0]]
    await publish_kinesis(endpoint, streams, {ARRIVAL[0]: first}, shards=1)
    config = kinesis_config(tmp_path, f"sqlite:///{tmp_path / 'store.sqlite'}", endpoint, streams,
                            join_plane={"topics": [ARRIVAL[0]]}, features={"enabled": False})

    def status() -> dict[str, Any]:
        result = ctxplane("status", "--config", str(config), "--offline", "--json", env=AWS_ENV)
        assert result.returncode == 0, result.stderr
        (only,) = json.loads(result.stdout)["partitions"]
        return only  # type: ignore[no-any-return]

    run = await anyio.to_thread.run_sync(lambda: ctxplane("run", "--config", str(config), "--once", env=AWS_ENV))
    assert run.returncode == 0, run.stderr[-2000:]
    drained = await anyio.to_thread.run_sync(status)
    # No record count and no newest sequence number on Kinesis: unknown, not 0.
    assert (drained["offset_kind"], drained["end"], drained["lag"], drained["unread"]) == (
        "kinesis_sequence", None, None, False)
    assert drained["behind_ms"] == 0
    more = [env for seq in range(6, 9) for topic, env in context_events(seq) if topic == ARRIVAL[0]]
    await publish_kinesis(endpoint, streams, {ARRIVAL[0]: more}, shards=1)
    waiting = await anyio.to_thread.run_sync(status)
    assert (waiting["next_offset"], waiting["lag"], waiting["unread"]) == (drained["next_offset"], None, True)
    assert isinstance(waiting["behind_ms"], int)
    text = await anyio.to_thread.run_sync(lambda: ctxplane("status", "--config", str(config), "--offline", env=AWS_ENV))
    assert "total lag: unknown (the bus does not count records); 1 of 1 partitions have unread records" in text.stdout

    refused = ctxplane("checkpoint", "reset", "--config", str(config), "--all-partitions", "--to-earliest",
                       "--reason", "x", env=AWS_ENV)
    assert refused.returncode == 2 and "moves file-bus checkpoints only" in refused.stderr
