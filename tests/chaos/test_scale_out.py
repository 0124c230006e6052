"""Scale-out drills: several `ctxplane run` processes share 4-shard Kinesis streams and one
PostgreSQL store, coordinated by fenced partition leases (docs/operations.md §Leases and fencing).

After every drill: the state digest equals a single-process file-bus run over the same events, the
dedupe registry holds every event (no loss), and the ``applied`` counter equals the number of
distinct events (no event applied twice, whatever was re-read after a take-over). During the drill:
every lease tenure (partition, epoch) belongs to exactly one process; a ``kill -9``'d process's
partitions are taken over within the lease duration plus a few seconds; a batch read under a lease
that moved on is refused at commit.

Leases are short here (2-3 s, renewed every 0.5 s) so take-overs happen quickly. Waits poll the
store with deadlines; the only sleeps are the short poll intervals, marked ``# sync-ok``.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest

from ctxplane.actors.operate.demo_workload import (
    TOPIC_ARRIVAL_EVENTS,
    TOPIC_TRAFFIC_BASELINE,
    generate,
)
from ctxplane.config.settings import StoreSettings
from ctxplane.runtime.store import open_store
from tests.support.kinesis import (
    AWS_ENV,
    file_bus_digest,
    kinesis_config,
    kinesis_endpoint,
    publish_kinesis,
    stream_names,
)
from tests.support.process import CtxplaneProcess, ctxplane
from tests.support.stores import fresh_dsn

pytestmark = [pytest.mark.kinesis, pytest.mark.postgres]

TOPICS = (TOPIC_ARRIVAL_EVENTS, TOPIC_TRAFFIC_BASELINE)
SHARDS = 4
PARTITIONS = len(TOPICS) * SHARDS
FLOWS = 160
SECTIONS: dict[str, dict[str, Any]] = {
    "join_plane": {"topics": [TOPIC_ARRIVAL_EVENTS]},
    "features": {"topics": [TOPIC_TRAFFIC_BASELINE]},
}
# Small batches and group commits: many transactions, so kills and steals land between and inside them.
INGEST = {"batch_max_records": 20, "group_commit_max_records": 200, "poll_interval_ms": 10}


def _waves(n: int) -> list[dict[str, list[dict[str, Any]]]]:
    workload = generate(FLOWS)
    return [{t: workload[t][i * len(workload[t]) // n : (i + 1) * len(workload[t]) // n] for t in TOPICS}
            for i in range(n)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> str:
    workload = generate(FLOWS)
    return file_bus_digest(tmp_path_factory.mktemp("reference"), {t: workload[t] for t in TOPICS}, **SECTIONS)


def _total() -> int:
    workload = generate(FLOWS)
    return sum(len(workload[t]) for t in TOPICS)


class Cluster:
    """Processes sharing one store and one set of streams; a probe connection to the store."""

    def __init__(self, tmp: Path, dsn: str, endpoint: str, streams: dict[str, str], conn: asyncpg.Connection,
                 leases: dict[str, Any]) -> None:
        self.tmp, self.dsn, self.endpoint, self.streams, self.conn = tmp, dsn, endpoint, streams, conn
        self.leases = leases
        self.procs: list[CtxplaneProcess] = []

    def start(self, count: int = 1) -> list[CtxplaneProcess]:
        """Start ``count`` processes at once; returns when every one logged that it runs."""
        started = []
        for _ in range(count):
            n = len(self.procs)
            config = kinesis_config(self.tmp / f"p{n}", self.dsn, self.endpoint, self.streams, leases=self.leases,
                                    ingest=INGEST, store={"auto_migrate": False}, **SECTIONS)
            self.procs.append(CtxplaneProcess(config, env=AWS_ENV))
            started.append(self.procs[-1])
        threads = [threading.Thread(target=p.start) for p in started]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert all(p.proc is not None and p.proc.poll() is None for p in started)
        return started

    def owner(self, process: CtxplaneProcess) -> str:
        assert process.proc is not None
        return f"{os.uname().nodename}:{process.proc.pid}"

    async def leases_now(self) -> dict[tuple[str, int], tuple[str, int, bool]]:
        """(topic, partition) -> (owner, epoch, live) from the lease table, by the database clock."""
        rows = await self.conn.fetch(
            "SELECT topic, partition_id, owner, epoch,"
            " expires_at_utc > to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS live"
            " FROM partition_leases")
        return {(r["topic"], r["partition_id"]): (r["owner"], r["epoch"], r["live"]) for r in rows}

    async def until(self, what: str, condition: Callable[[], Any], timeout: float) -> float:  # noqa: ASYNC109 - polls an outside process
        """Poll ``condition`` (async) until truthy; returns the seconds it took."""
        start = time.monotonic()
        while not await condition():
            if time.monotonic() - start > timeout:
                tails = "\n".join(line for p in self.procs for line in p.lines[-8:])
                raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{tails}")
            await anyio.sleep(0.05)  # sync-ok: polling a condition with a deadline
        return time.monotonic() - start

    async def applied(self) -> int:
        try:
            return int(await self.conn.fetchval("SELECT count(*) FROM intake_dedupe"))
        except asyncpg.UndefinedTableError:
            return 0

    async def publish(self, wave: dict[str, list[dict[str, Any]]]) -> None:
        await publish_kinesis(self.endpoint, self.streams, wave, shards=SHARDS)

    async def check_final(self, reference: str) -> None:
        counters = dict(await self.conn.fetch("SELECT name, sum(value) FROM intake_counters GROUP BY name"))
        assert counters["applied"] == _total()  # no event applied twice
        assert await self.applied() == _total()  # no event lost
        config = self.procs[0].config
        digest = ctxplane("digest", "--config", str(config))
        assert digest.returncode == 0, digest.stderr
        assert digest.stdout.strip() == reference

    def tenures(self) -> dict[tuple[str, int, int], list[int]]:
        """(topic, partition, epoch) -> indexes of the processes that logged acquiring it."""
        out: dict[tuple[str, int, int], list[int]] = {}
        for index, process in enumerate(self.procs):
            for event in process.events():
                if event.get("event") == "lease acquired":
                    out.setdefault((event["topic"], event["partition"], event["epoch"]), []).append(index)
        return out


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Callable[..., Cluster]]:
    endpoint = kinesis_endpoint()
    base_dsn = await fresh_dsn("postgresql", tmp_path)
    # Migrated once up front, as a scale-out deployment does (`ctxplane migrate`): several
    # processes auto-migrating one fresh database at the same moment race on CREATE TABLE.
    async with await open_store(StoreSettings(dsn=base_dsn)) as store:
        await store.migrate()
    conn = await asyncpg.connect(base_dsn)
    made: list[Cluster] = []

    def make(**leases: Any) -> Cluster:
        # A process frozen mid-transaction holds its lease-row locks; the server must end its
        # session within the lease duration, or nobody can take its partitions over (docs).
        dsn = f"{base_dsn}?idle_in_transaction_session_timeout={int(leases['duration_s'] * 1000)}"
        made.append(Cluster(tmp_path, dsn, endpoint, stream_names(TOPICS), conn, leases))
        return made[-1]

    try:
        yield make
    finally:
        for c in made:
            for index, process in enumerate(c.procs):
                if process.proc is not None and process.proc.poll() is None:
                    os.kill(process.proc.pid, signal.SIGCONT)
                    process.kill()
                # Kept for post-mortems: the whole log of every process of the drill.
                (tmp_path / f"process-{index}.log").write_text("\n".join(process.lines) + "\n")
        await conn.close()


@pytest.mark.parametrize("processes", [2, 3])
async def test_kill_9_of_one_process_hands_its_shards_over_within_the_lease_duration(
    processes: int, cluster: Callable[..., Cluster], reference: str
) -> None:
    duration = 3.0
    c = cluster(duration_s=duration, renew_every_s=0.5)
    waves = _waves(3)
    await c.publish(waves[0])
    c.start(processes)
    share = -(-PARTITIONS // processes)

    async def balanced() -> bool:
        owners = [owner for owner, _e, live in (await c.leases_now()).values() if live]
        counts = sorted(owners.count(c.owner(p)) for p in c.procs)
        return len(owners) == PARTITIONS and counts[-1] <= share and counts[0] >= PARTITIONS // processes - 1 and counts[0] > 0

    await c.until("leases balanced over every process", balanced, 20)
    await c.publish(waves[1])
    await c.until("ingest under way", lambda: _more_than(c, 0), 20)
    victim = c.procs[-1]
    victim_owner = c.owner(victim)
    victim.kill()  # SIGKILL: no release, in-flight batches lost; its leases must expire
    killed_at = time.monotonic()

    async def taken_over() -> bool:
        leases = await c.leases_now()
        return len(leases) == PARTITIONS and all(o != victim_owner and live for o, _e, live in leases.values())

    failover = await c.until("the killed process's shards taken over", taken_over, duration + 10)
    print(f"\nfailover with {processes} processes: {failover:.2f}s after kill -9 (lease duration {duration}s)")
    assert time.monotonic() - killed_at <= duration + 4
    await c.publish(waves[2])
    await c.until("every event applied", lambda: _at_least(c, _total()), 60)
    for process in c.procs[:-1]:
        assert process.stop() == 0
    # One owner per tenure: no (partition, epoch) was ever acquired by two processes.
    tenures = c.tenures()
    assert tenures and all(len(owners) == 1 for owners in tenures.values()), tenures
    await c.check_final(reference)


async def test_a_batch_read_under_a_stolen_lease_is_refused_and_nothing_is_applied_twice(
    cluster: Callable[..., Cluster], reference: str
) -> None:
    # Renewals far apart: a forced steal stays unnoticed long enough for in-flight batches to hit it.
    c = cluster(duration_s=10, renew_every_s=3)
    waves = _waves(8)
    await c.publish(waves[0])
    (process,) = c.start()
    await c.until("every lease held", lambda: _held(c, PARTITIONS), 20)
    refused = 0
    for wave in waves[1:]:
        # Steal every lease (epoch forward, owner unchanged so it is re-taken with a new epoch),
        # then feed the partitions: batches read under the old epochs must be refused at commit.
        await c.conn.execute("UPDATE partition_leases SET epoch = epoch + 1")
        await c.publish(wave)
        await anyio.sleep(0.3)  # sync-ok: lets batches of the old tenure reach the commit (no condition to wait on)
        refused = sum(1 for e in process.events() if e.get("event") == "refusing batches read under a lost lease")
        if refused >= 2:
            break
    for later in waves[waves.index(wave) + 1 :]:
        await c.publish(later)
    assert refused >= 1, "no in-flight batch was ever caught by the fence"
    await c.until("every event applied", lambda: _at_least(c, _total()), 60)
    lost = [e for e in process.events() if e.get("event") == "lease lost"]
    assert lost, "the lease actor never noticed the steal"
    assert process.stop() == 0
    await c.check_final(reference)


async def test_a_paused_process_past_its_lease_is_fenced_when_it_resumes(
    cluster: Callable[..., Cluster], reference: str
) -> None:
    duration = 2.0
    c = cluster(duration_s=duration, renew_every_s=0.5)
    waves = _waves(3)
    await c.publish(waves[0])
    a, b = c.start(2)
    await c.until("both processes hold leases", lambda: _owners(c, 2), 20)
    await c.publish(waves[1])
    assert a.proc is not None
    os.kill(a.proc.pid, signal.SIGSTOP)  # frozen mid-ingest, leases and in-flight batches included
    a_owner = c.owner(a)

    async def b_owns_all() -> bool:
        leases = await c.leases_now()
        return all(owner != a_owner for owner, _e, _live in leases.values())

    await c.until("the other process took the paused one's leases", b_owns_all, duration + 10)
    await c.publish(waves[2])
    os.kill(a.proc.pid, signal.SIGCONT)
    await c.until("every event applied", lambda: _at_least(c, _total()), 60)
    await c.until("the resumed process noticed", lambda: _logged(a, "lease lost"), 15)
    for process in (a, b):
        assert process.stop() == 0
    tenures = c.tenures()
    assert all(len(owners) == 1 for owners in tenures.values()), tenures
    await c.check_final(reference)


async def _more_than(c: Cluster, n: int) -> bool:
    return await c.applied() > n


async def _at_least(c: Cluster, n: int) -> bool:
    return await c.applied() >= n


async def _held(c: Cluster, n: int) -> bool:
    return sum(1 for _o, _e, live in (await c.leases_now()).values() if live) == n


async def _owners(c: Cluster, n: int) -> bool:
    return len({o for o, _e, live in (await c.leases_now()).values() if live and o}) == n


async def _logged(process: CtxplaneProcess, event: str) -> bool:
    return any(e.get("event") == event for e in process.events())
