"""Replay, rebuild, rewind and determinism across restarts, through real `ctxplane` processes (SQLite).

Every check is the drill check of docs/performance.md §Reliability: the state digest equals a clean single pass over the
same events, the duplicate counter explains every re-delivery, and the ledger holds nothing extra.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

from ctxplane.actors.operate.demo_workload import (
    TOPIC_ARRIVAL_EVENTS,
    TOPIC_TRAFFIC_FRAUD,
    write_demo_bus,
)
from ctxplane.actors.operate.digest import ledger_digest_program, state_digest_program
from ctxplane.config.settings import load_settings
from ctxplane.runtime.store import open_store
from tests.support.process import CtxplaneProcess, ctxplane, write_config
from tests.support.workload import PINS, context_events, publish

# 120 flows ≈ 600 events over 6 topics × 2 partitions: every partition has records, both planes.
FLOWS = 120


@pytest.fixture
def eb(tmp_path: Path) -> Path:
    root = tmp_path / "eb"
    write_demo_bus(root, FLOWS, partitions=2)
    return root


def _config(directory: Path, eb: Path, **sections: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    return write_config(directory, f"sqlite:///{directory / 'store.sqlite'}", bus={"root": str(eb)}, **sections)


def _ok(*args: str, env: dict[str, str] | None = None) -> str:
    result = ctxplane(*args, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def _digests(config: Path) -> tuple[str, str]:
    """(state digest, ledger digest) of the store ``config`` names: the programs `ctxplane digest`
    and `ctxplane digest --ledger` run, in this process (a CLI start costs ~1 s here)."""

    async def digests() -> tuple[str, str]:
        async with await open_store(load_settings(config).store) as store:
            return await store.read(state_digest_program()), await store.read(ledger_digest_program())

    return anyio.run(digests)


def _sql(config: Path, sql: str) -> list[tuple[Any, ...]]:
    """Query the store read-only (safe while a `ctxplane run` writes to it)."""
    conn = sqlite3.connect(f"file:{config.parent / 'store.sqlite'}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def _counters(config: Path) -> dict[str, int]:
    return dict(_sql(config, "SELECT name, sum(value) FROM intake_counters GROUP BY name"))


def _checkpoints(config: Path) -> list[tuple[Any, ...]]:
    return _sql(config, "SELECT topic, partition_id, plane, next_offset, offset_kind FROM checkpoints ORDER BY topic, partition_id")


def _wait_committed(config: Path, proc: CtxplaneProcess, at_least: int, timeout: float = 60.0) -> None:
    """Wait until the committed checkpoints cover ``at_least`` offsets (a condition on durable
    state, polled read-only), or fail when the process exits or the timeout passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            rows = _sql(config, "SELECT coalesce(sum(CAST(next_offset AS INTEGER)), 0) FROM checkpoints")
        except sqlite3.OperationalError:  # the store or its schema does not exist yet
            rows = [(0,)]
        if rows[0][0] >= at_least:
            return
        assert proc.proc is not None and proc.proc.poll() is None, "\n".join(proc.lines[-20:])
        time.sleep(0.005)  # sync-ok: polling a durable condition; the interval only bounds the wait's latency
    raise AssertionError(f"fewer than {at_least} offsets committed after {timeout} s")


def _summary(stdout: str) -> dict[str, str]:
    line = stdout.strip()
    assert "\n" not in line
    return dict(field.split("=", 1) for field in line.split())


def _bus_lines(eb: Path) -> int:
    return sum(path.read_bytes().count(b"\n") for path in eb.glob("*/partition=*.jsonl"))


# -- rebuild -------------------------------------------------------------------------------------


def test_rebuild_from_the_live_basis_matches_the_live_store_and_is_deterministic(tmp_path: Path, eb: Path) -> None:
    live = _config(tmp_path / "live", eb)
    _ok("run", "--config", str(live), "--once")
    live_digests = _digests(live)
    manifest = tmp_path / "rebuild.json"
    manifest.write_text(_ok("checkpoint", "manifest", "--config", str(live)), encoding="utf-8")
    summaries = []
    for name in ("rebuild-a", "rebuild-b"):
        config = _config(tmp_path / name, eb)
        summaries.append(_summary(_ok("replay", "--config", str(config), "--manifest", str(manifest))))
        # Same state, same ledger, same basis as the live store.
        assert _digests(config) == live_digests
        assert _ok("digest", "--config", str(config)).strip() == live_digests[0]
        assert _checkpoints(config) == _checkpoints(live)
        assert _counters(config) == _counters(live)
    first, second = summaries
    lines = _bus_lines(eb)
    assert first["replay_id"] == second["replay_id"] and len(first["replay_id"]) == 32
    assert first["basis_digest"] == second["basis_digest"]
    assert (first["events_read"], first["applied"], first["duplicates"], first["rejected"]) == (str(lines), str(lines), "0", "0")
    assert float(first["events_per_s"]) > 0
    # The replay is recorded with the basis it left; replaying it again changes nothing.
    config = tmp_path / "rebuild-a" / "ctxplane.yaml"
    recorded = _sql(config, "SELECT replay_id, events, applied, duplicates, basis_digest, basis_json FROM replays")
    assert [row[:5] for row in recorded] == [(first["replay_id"], lines, lines, 0, first["basis_digest"])]
    assert set(orjson.loads(recorded[0][5])) == {"join", "features"}
    again = _summary(_ok("replay", "--config", str(config), "--manifest", str(manifest)))
    assert (again["applied"], again["duplicates"], again["basis_digest"]) == ("0", str(lines), first["basis_digest"])
    assert _digests(config) == live_digests


# -- determinism across restarts and poll sizes ----------------------------------------------------


def test_restart_and_resume_with_poll_size_1_equals_a_single_pass(tmp_path: Path, eb: Path) -> None:
    single = _config(tmp_path / "single", eb)
    _ok("run", "--config", str(single), "--once")
    resumed = _config(tmp_path / "resumed", eb)
    tiny = {"CTXPLANE__INGEST__BATCH_MAX_RECORDS": "1"}
    lines = _bus_lines(eb)
    # Two incarnations killed -9 mid-ingest (a third and two thirds of the way in), then a third
    # drains; each resumes from the committed checkpoints of the one before, reading 1 record a poll.
    for fraction in (1, 2):
        proc = CtxplaneProcess(resumed, env=tiny).start()
        try:
            _wait_committed(resumed, proc, fraction * lines // 3)
        finally:
            proc.kill()
    _ok("run", "--config", str(resumed), "--once", env=tiny)
    assert _digests(resumed) == _digests(single)
    assert _checkpoints(resumed) == _checkpoints(single)
    # Nothing was applied twice and nothing was re-delivered: effects and checkpoint commit together.
    assert _counters(resumed) == _counters(single) == {"applied": lines}
    planes = {row[2] for row in _checkpoints(resumed)}
    assert planes == {"join", "features"}


# -- the replay command line -----------------------------------------------------------------------


def test_replay_usage_errors_exit_2_with_one_line(tmp_path: Path, eb: Path) -> None:
    config = _config(tmp_path / "store", eb, features={"enabled": False})
    unbounded = tmp_path / "unbounded.yaml"
    unbounded.write_text(f"topics: [{{topic: {TOPIC_ARRIVAL_EVENTS}, partitions: [{{partition: 0}}]}}]\n", encoding="utf-8")
    result = ctxplane("replay", "--config", str(config), "--manifest", str(unbounded))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "neither from_offset nor to_offset" in result.stderr
    not_allowed = tmp_path / "traffic.json"
    not_allowed.write_text(orjson.dumps({"topics": [{"topic": TOPIC_TRAFFIC_FRAUD, "partitions": [{"partition": 0, "from_offset": 0}]}]}).decode())
    result = ctxplane("replay", "--config", str(config), "--manifest", str(not_allowed))
    assert result.returncode == 2
    assert result.stderr.strip() == f"ctxplane: REPLAY_TOPIC_NOT_ALLOWED: {TOPIC_TRAFFIC_FRAUD}"
    result = ctxplane("replay", "--config", str(config), "--manifest", str(tmp_path / "absent.yaml"))
    assert result.returncode == 2 and "cannot read replay manifest" in result.stderr
    # Nothing was written by any refused replay.
    assert not (tmp_path / "store" / "store.sqlite").exists()


def test_replay_pins_mismatch_is_ledgered_and_writes_no_frames(tmp_path: Path) -> None:
    eb = tmp_path / "eb"
    publish(eb, [item for seq in range(1, 6) for item in context_events(seq)], partitions=1)
    config = _config(tmp_path / "store", eb, features={"enabled": False})
    manifest = tmp_path / "pins.yaml"
    manifest.write_text(
        f"topics:\n  - topic: {TOPIC_ARRIVAL_EVENTS}\n    partitions: [{{partition: 0, from_offset: 0}}]\n"
        f"pins: {{platform_run_id: {PINS['platform_run_id']}, scenario_run_id: {'c' * 32}}}\n", encoding="utf-8")
    summary = _summary(_ok("replay", "--config", str(config), "--manifest", str(manifest)))
    assert (summary["events_read"], summary["applied"], summary["rejected"]) == ("5", "0", "5")
    rows = _sql(config, "SELECT reason_code, details_json FROM apply_failures")
    assert len(rows) == 5 and {reason for reason, _ in rows} == {"REPLAY_PINS_MISMATCH"}
    assert orjson.loads(rows[0][1])["mismatches"] == {"scenario_run_id": {"expected": "c" * 32, "actual": PINS["scenario_run_id"]}}
    assert _sql(config, "SELECT count(*) FROM join_frame_roles") == [(0,)]
    assert _sql(config, "SELECT count(*) FROM flow_binding_claims") == [(0,)]


# -- explicit rewind -------------------------------------------------------------------------------


def test_rewind_redelivers_as_duplicates_with_zero_state_change(tmp_path: Path, eb: Path) -> None:
    config = _config(tmp_path / "store", eb)
    _ok("run", "--config", str(config), "--once")
    before, counters = _digests(config), _counters(config)
    checkpoints = {(t, p): int(o) for t, p, _plane, o, _kind in _checkpoints(config)}
    traffic_records = checkpoints[(TOPIC_TRAFFIC_FRAUD, 1)]
    out = _ok("checkpoint", "rewind", "--config", str(config), "--topic", TOPIC_ARRIVAL_EVENTS, "--partition", "0", "--by", "5")
    assert out.strip().endswith(f"from offset {checkpoints[(TOPIC_ARRIVAL_EVENTS, 0)]} to {checkpoints[(TOPIC_ARRIVAL_EVENTS, 0)] - 5}")
    _ok("checkpoint", "rewind", "--config", str(config), "--topic", TOPIC_TRAFFIC_FRAUD, "--partition", "1", "--to-offset", "0")
    assert _sql(config, "SELECT topic, partition_id, to_offset FROM checkpoint_rewinds ORDER BY rewound_at_utc") == [
        (TOPIC_ARRIVAL_EVENTS, 0, str(checkpoints[(TOPIC_ARRIVAL_EVENTS, 0)] - 5)), (TOPIC_TRAFFIC_FRAUD, 1, "0"),
    ]
    # Forward is not a rewind.
    result = ctxplane("checkpoint", "rewind", "--config", str(config), "--topic", TOPIC_ARRIVAL_EVENTS,
                      "--partition", "0", "--to-offset", "999999")
    assert result.returncode == 2 and "only moves a checkpoint backward" in result.stderr
    _ok("run", "--config", str(config), "--once")
    assert _digests(config) == before
    assert {(t, p): int(o) for t, p, _plane, o, _kind in _checkpoints(config)} == checkpoints
    assert _counters(config) == {**counters, "duplicate": 5 + traffic_records}


def test_replay_and_rewind_refuse_while_a_supervisor_holds_the_store(tmp_path: Path, eb: Path) -> None:
    config = _config(tmp_path / "store", eb)
    manifest = tmp_path / "m.yaml"
    manifest.write_text(f"topics: [{{topic: {TOPIC_ARRIVAL_EVENTS}, partitions: [{{partition: 0, to_offset: 3}}]}}]\n")
    proc = CtxplaneProcess(config).start()
    try:
        _wait_committed(config, proc, 1)
        for args in (("replay", "--config", str(config), "--manifest", str(manifest)),
                     ("checkpoint", "rewind", "--config", str(config), "--topic", TOPIC_ARRIVAL_EVENTS,
                      "--partition", "0", "--by", "1")):
            result = ctxplane(*args)
            assert result.returncode == 1, result.stderr
            assert "refusing to" in result.stderr and "stop it first" in result.stderr
            assert result.stderr.count("\n") == 1
    finally:
        proc.kill()
    assert _sql(config, "SELECT count(*) FROM replays") == [(0,)]
    assert _sql(config, "SELECT count(*) FROM checkpoint_rewinds") == [(0,)]
