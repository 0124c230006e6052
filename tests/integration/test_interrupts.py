"""SIGINT / SIGTERM during `ctxplane replay` and `ctxplane run --once`, real processes.

Once, Ctrl-C during a replay of a 100k-event bus exited 139 (a segfault: asyncio's Ctrl-C handling
cancelled the main task natively, the wait for the SQLite worker thread was abandoned, and the
clean-up closed the connection under the running transaction), with no message and the `.lock` file
left behind; an interrupted `run --once` exited 0 like a full drain. Expected: the group commit in
progress finishes, connections are closed once unused, the lock file is removed, exit 130 (SIGINT) /
143 (SIGTERM) with one line saying where it stopped — and running the command again completes the
work with the digest of a clean single pass.

Synchronisation, never timing: the test holds the store's write lock, so the command cannot commit
anything until the test has seen it log that the signal arrived (``replay stopping`` /
``stopping``). On PostgreSQL the test locks the ``checkpoints`` table and waits until the replay's
group commit is blocked on it (``pg_locks``), so the signal lands inside a group commit.
"""

from __future__ import annotations

import re
import signal
import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest

from ctxplane.actors.operate.demo_workload import write_demo_bus
from ctxplane.config.settings import load_settings
from tests.support.process import CtxplaneProcess, ctxplane, write_config
from tests.support.stores import fresh_dsn, query_rows

CONTEXT_TOPICS = (
    "fp.bus.context.arrival_entities.v1", "fp.bus.context.arrival_events.v1",
    "fp.bus.context.flow_anchor.baseline.v1", "fp.bus.context.flow_anchor.fraud.v1",
)
# Small batches and group commits: many commits to interrupt, none of them the last.
INGEST = {"batch_max_records": 20, "group_commit_max_records": 60, "poll_interval_ms": 10}
SIGNALS = [pytest.param(signal.SIGINT, 130, id="SIGINT"), pytest.param(signal.SIGTERM, 143, id="SIGTERM")]
_STOPPED_AT = re.compile(r"after (\d+) group commit\(s\) at (\S+) partition (\d+) offset (\d+)")


@pytest.fixture(scope="module")
def eb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bus") / "eb"
    write_demo_bus(root, 800, partitions=2)  # ~2,400 context events: ~300 per partition
    return root


def _config(directory: Path, eb: Path, dsn: str | None = None, **sections: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    return write_config(directory, dsn or f"sqlite:///{directory / 'store.sqlite'}", bus={"root": str(eb)},
                        ingest=INGEST, store={"busy_timeout_s": 120}, features={"enabled": False}, **sections)


def _manifest(directory: Path) -> Path:
    path = directory / "manifest.json"
    path.write_bytes(orjson.dumps({"topics": [
        {"topic": topic, "partitions": [{"partition": p, "from_offset": 0} for p in (0, 1)]} for topic in CONTEXT_TOPICS]}))
    return path


def _ok(*args: str) -> str:
    result = ctxplane(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip()


def _rows(config: Path, sql: str) -> list[tuple[Any, ...]]:
    return query_rows(load_settings(config).store.dsn, sql)


def _clean_digest(tmp_path: Path, eb: Path) -> str:
    """The state digest of a clean single pass over the same window, into a fresh SQLite store."""
    clean = _config(tmp_path / "clean", eb)
    _ok("replay", "--config", str(clean), "--manifest", str(_manifest(tmp_path / "clean")))
    return _ok("digest", "--config", str(clean))


def _check_interrupted(proc: CtxplaneProcess, config: Path, signum: int, code: int) -> None:
    """Exit ``code``; the last line says where the replay stopped, and the store agrees with it."""
    assert proc.wait(120) == code, proc.lines[-20:]
    last = proc.lines[-1]
    assert last.startswith("ctxplane: replay ") and f"interrupted by {signal.Signals(signum).name}" in last, last
    committed = int(re.search(r"events_committed=(\d+)", last).group(1))  # type: ignore[union-attr]
    counted = _rows(config, "SELECT coalesce(sum(value), 0) FROM intake_counters")[0][0]
    assert counted == committed, (last, counted)  # whole group commits only, as the line says
    stopped = _STOPPED_AT.search(last)
    if stopped is None:  # the signal came before the first group was handed to the writer
        assert "before its first group commit: nothing was applied" in last and committed == 0, last
    else:
        _groups, topic, partition, offset = stopped.groups()
        assert _rows(config, f"SELECT next_offset FROM checkpoints WHERE topic = '{topic}' AND partition_id = {partition}") == [
            (offset,)], last
    assert _rows(config, "SELECT count(*) FROM replays") == [(0,)]  # an unfinished replay is not recorded


@pytest.mark.parametrize(("signum", "code"), SIGNALS)
def test_a_signal_during_a_sqlite_replay_exits_130_or_143_and_the_replay_can_be_finished(
    tmp_path: Path, eb: Path, signum: int, code: int
) -> None:
    config = _config(tmp_path / "live", eb)
    manifest = _manifest(tmp_path / "live")
    _ok("migrate", "--config", str(config))
    db = tmp_path / "live" / "store.sqlite"
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # no group commit can commit while the test holds this
    proc = CtxplaneProcess(config, command=("replay", "--config", str(config), "--manifest", str(manifest)),
                           ready_event="replay starting")
    try:
        proc.start()
        proc.send_signal(signum)
        proc.wait_for_event("replay stopping")
        holder.execute("ROLLBACK")  # the group commit in progress, if any, may now finish
    except BaseException:
        proc.kill()
        raise
    finally:
        holder.close()
    _check_interrupted(proc, config, signum, code)
    assert not (tmp_path / "live" / "store.sqlite.lock").exists()
    # Running it again finishes the work: the same state as one clean pass.
    assert _ok("replay", "--config", str(config), "--manifest", str(manifest)).startswith("replay_id=")
    assert _ok("digest", "--config", str(config)) == _clean_digest(tmp_path, eb)
    assert not (tmp_path / "live" / "store.sqlite.lock").exists()


@pytest.mark.parametrize(("signum", "code"), SIGNALS)
async def test_a_signal_inside_a_postgresql_group_commit_lets_it_commit_whole(
    tmp_path: Path, eb: Path, signum: int, code: int
) -> None:
    import anyio
    import asyncpg

    dsn = await fresh_dsn("postgresql", tmp_path)  # skips without PostgreSQL (fails under CTXPLANE_REQUIRE_PG)
    config = _config(tmp_path / "live", eb, dsn)
    manifest = _manifest(tmp_path / "live")
    await anyio.to_thread.run_sync(_ok, "migrate", "--config", str(config))
    holder = await asyncpg.connect(dsn)
    proc = CtxplaneProcess(config, command=("replay", "--config", str(config), "--manifest", str(manifest)),
                           ready_event="replay starting")
    try:
        transaction = holder.transaction()
        await transaction.start()
        # Plain reads still pass (the replay reads its checkpoints); its first checkpoint write waits.
        await holder.execute("LOCK TABLE checkpoints IN EXCLUSIVE MODE")
        await anyio.to_thread.run_sync(proc.start)
        waiting = "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'checkpoints'::regclass"
        with anyio.fail_after(60):  # a hang guard: the condition is the replay blocked in its commit
            # Polled: the condition is another process's lock wait, which no event announces.
            while not await holder.fetchval(waiting):  # noqa: ASYNC110
                await anyio.sleep(0.02)
        proc.send_signal(signum)
        await anyio.to_thread.run_sync(proc.wait_for_event, "replay stopping")
        await transaction.rollback()
    except BaseException:
        proc.kill()
        raise
    finally:
        await holder.close()
    await anyio.to_thread.run_sync(_check_interrupted, proc, config, signum, code)
    assert _STOPPED_AT.search(proc.lines[-1]) is not None and "after 1 group commit(s)" in proc.lines[-1]
    assert (await anyio.to_thread.run_sync(_ok, "replay", "--config", str(config), "--manifest", str(manifest)))
    assert await anyio.to_thread.run_sync(_ok, "digest", "--config", str(config)) == await anyio.to_thread.run_sync(
        _clean_digest, tmp_path, eb)


@pytest.mark.parametrize(("signum", "code"), SIGNALS)
def test_an_interrupted_run_once_exits_130_or_143_not_0(tmp_path: Path, eb: Path, signum: int, code: int) -> None:
    config = _config(tmp_path / "live", eb)
    _ok("migrate", "--config", str(config))
    holder = sqlite3.connect(tmp_path / "live" / "store.sqlite", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # the partitions cannot drain while the test holds this
    proc = CtxplaneProcess(config, "--once")
    try:
        proc.start()
        proc.send_signal(signum)
        proc.wait_for_event("stopping")
        holder.execute("ROLLBACK")  # in-flight batches may now commit during the graceful stop
    except BaseException:
        proc.kill()
        raise
    finally:
        holder.close()
    assert proc.wait(120) == code, proc.lines[-20:]
    last = proc.lines[-1]
    assert last.startswith(f"ctxplane: run --once interrupted by {signal.Signals(signum).name} ("), last
    assert re.search(r"\((\d+) of 8 partitions drained\)", last), last
    assert not (tmp_path / "live" / "store.sqlite.lock").exists()
    # A second --once drains the rest: a full drain exits 0, with a clean pass's state.
    assert ctxplane("run", "--config", str(config), "--once", timeout=120).returncode == 0
    assert _ok("digest", "--config", str(config)) == _clean_digest(tmp_path, eb)
