"""Shared pieces of the latency benchmarks (ingest_bench.py, query_bench.py).

Only public surfaces: a real `ctxplane run` process, the file bus (docs/events.md §The file bus) and the query
socket (§5) through the shipped client. Latency is timed in separate client processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import IO, Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
CLI = [sys.executable, "-m", "ctxplane.actors.app.cli"]
AS_OF = "2026-02-14T05:00:00.000000Z"  # the end of the hot key's 7 days
PG_ENV = ("CTXPLANE_BENCH_PG_DSN", "CTXPLANE_TEST_PG_DSN")  # the second is what ops/pg_up.sh exports
sys.path.insert(0, str(ROOT))  # the workload builders in tests/support


def write_config(directory: Path, dsn: str, **extra: dict[str, Any]) -> Path:
    """A config for a store at ``dsn``, a file bus and a Unix query socket under ``directory``."""
    cfg: dict[str, Any] = {
        "store": {"dsn": dsn}, "bus": {"root": str(directory / "eb")},
        "query": {"listen": f"unix:{directory / 'q.sock'}"}, "metrics": {"listen": None},
        "logging": {"format": "json", "level": "info"}, "health": {"artifact_root": str(directory / "art")},
    }
    for section, values in extra.items():
        cfg.setdefault(section, {}).update(values)
    path = directory / "ctxplane.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def pg_admin_dsn(explicit: str | None = None) -> str | None:
    return explicit or next((os.environ[name] for name in PG_ENV if os.environ.get(name)), None)


def fresh_dsn(backend: str, directory: Path, admin_dsn: str | None = None) -> str:
    """An empty store: a SQLite file in ``directory``, or a new database on the PostgreSQL server."""
    if backend == "sqlite":
        return f"sqlite:///{directory / 'store.sqlite'}"
    admin = pg_admin_dsn(admin_dsn)
    if admin is None:
        raise SystemExit(f"no PostgreSQL DSN: pass --dsn or set {PG_ENV[0]} (or eval \"$(ops/pg_up.sh)\")")
    name = f"bench_{uuid.uuid4().hex[:12]}"
    _pg(admin, f'CREATE DATABASE "{name}"')
    return admin.rsplit("/", 1)[0] + "/" + name


def drop_database(dsn: str, admin_dsn: str | None = None) -> None:
    admin, name = pg_admin_dsn(admin_dsn), dsn.rsplit("/", 1)[1]
    if admin:
        _pg(admin, f'DROP DATABASE IF EXISTS "{name}"')


def _pg(dsn: str, sql: str | None) -> None:
    import anyio
    import asyncpg

    async def go() -> None:
        conn = await asyncpg.connect(dsn, timeout=5)
        try:
            if sql:
                await conn.execute(sql)
        finally:
            await conn.close()

    anyio.run(go)


def pg_reachable(dsn: str | None) -> bool:
    if not dsn:
        return False
    try:
        _pg(dsn, None)
    except Exception:  # any failure to connect means "not reachable" here
        return False
    return True


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    if not ordered:
        return {"n": 0, "p50_ms": float("nan"), "p99_ms": float("nan"), "p999_ms": float("nan"), "max_ms": float("nan")}

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return {"n": len(ordered), "p50_ms": at(0.50), "p99_ms": at(0.99), "p999_ms": at(0.999), "max_ms": ordered[-1] * 1000}


def preload(eb: Path, flows: int, hot_events: int) -> int:
    """Context events for ``flows`` ready flows and one hot instrument with ``hot_events`` events over 7 days."""
    from tests.support.workload import TRAFFIC_FRAUD, context_events, envelope, publish

    publish(eb, [item for seq in range(1, flows + 1) for item in context_events(seq)], partitions=4)
    span_s = 7 * 86400
    hot = [(TRAFFIC_FRAUD[0], envelope(TRAFFIC_FRAUD[1], {"flow_id": f"hf-{i}", "instrument_id": "inst-hot", "amount": (i % 500) + 0.25},
                                       eid=f"{i:064x}", ts_s=i * span_s / hot_events)) for i in range(hot_events)]
    publish(eb, hot, partitions=4)
    return 3 * flows + hot_events


def resolve_requests(flows: int) -> list[dict[str, Any]]:
    from tests.support.workload import PINS

    return [{"op": "resolve_flow_binding", "pins": PINS, "flow_id": f"flow-{i}"} for i in range(1, flows + 1, 7)]


def features_requests() -> list[dict[str, Any]]:
    from tests.support.workload import PINS

    return [{"op": "get_features", "pins": PINS, "as_of_time_utc": AS_OF,
             "feature_keys": [{"key_type": "instrument_id", "key_id": "inst-hot"}],
             "feature_groups": [{"name": "core_features", "version": "v1"}, {"name": "entity_velocity", "version": "v1"}]}]


def publisher(eb: Path, rate: float, seconds: float, start_seq: int) -> subprocess.Popen[bytes]:
    """A process appending context events (arrival, entities, anchor of new flows) at ``rate`` events/s."""
    code = r'''
import sys, time, anyio
from ctxplane.runtime.bus import FileBus, partition_key_for
from tests.support.workload import context_events
eb, rate, seconds, start = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
async def main():
    bus = FileBus(eb)
    t0 = time.perf_counter(); seq = start; sent = 0
    while time.perf_counter() - t0 < seconds:
        batch = {}
        for _ in range(max(1, int(rate / 20 / 3))):
            for topic, env in context_events(seq):
                batch.setdefault(topic, []).append((partition_key_for(env, None), env))
            seq += 1
        for topic, items in batch.items():
            await bus.publish_many(topic, items, partitions=4)
            sent += len(items)
        ahead = sent / rate - (time.perf_counter() - t0)
        if ahead > 0:
            await anyio.sleep(ahead)
    print(sent)
anyio.run(main)
'''
    return subprocess.Popen([sys.executable, "-c", code, str(eb), str(rate), str(seconds), str(start_seq)],
                            stdout=subprocess.PIPE, cwd=ROOT)


def published(eb: Path) -> int:
    """Records appended to the bus so far, from each topic's head.json."""
    total = 0
    for head in eb.glob("*/head.json"):
        total += sum(p["next_offset"] for p in json.loads(head.read_text())["partitions"].values())
    return total


class Supervisor:
    """A long-running `ctxplane run --config FILE`, logging to a file (a pipe nobody reads would block
    it); ready once its query socket answers `health`."""

    def __init__(self, config: Path, listen: str, log: Path) -> None:
        from ctxplane.runtime.client import Client, QueryEndpointUnavailable

        self._log: IO[bytes] = open(log, "wb")  # closed in stop()
        self.proc = subprocess.Popen([*CLI, "run", "--config", str(config)], stderr=self._log, cwd=ROOT)
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"ctxplane run did not start: {log.read_text()[-2000:]}")
            try:
                with Client(listen, timeout_s=5) as client:
                    if client.request({"op": "health"}).get("status") == "OK":
                        return
            except QueryEndpointUnavailable:
                pass
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def applied(client: Any) -> int:
    """Records the store has committed, both planes: the sum of the `basis` op's next offsets."""
    answer = client.request({"op": "basis"})
    return sum(int(p["next_offset"]) for plane in answer["planes"].values()
               for parts in plane["topics"].values() for p in parts.values())


_CLIENT = r'''
import json, sys, time
from ctxplane.runtime.client import Client
print("ready", flush=True)
for line in sys.stdin:
    cmd = json.loads(line)
    requests = json.load(open(cmd["requests"]))
    samples, statuses = [], {}
    with Client(cmd["listen"], timeout_s=30) as client:
        for req in requests[:50]:
            client.request(req)
        late = time.time() - cmd["start"]
        if late < 0:
            time.sleep(-late)
        deadline = time.perf_counter() + (cmd["start"] + cmd["seconds"] - time.time())
        i = cmd["offset"]
        while time.perf_counter() < deadline:
            req = requests[i % len(requests)]
            i += 1
            t = time.perf_counter()
            answer = client.request(req)
            samples.append(time.perf_counter() - t)
            key = answer.get("status")
            statuses[key] = statuses.get(key, 0) + 1
    print(json.dumps({"samples": samples, "statuses": statuses, "late_s": max(0.0, late)}), flush=True)
'''


class ClientPool:
    """Client processes started once; each phase they connect, warm up, then time requests in one
    shared wall-clock window, so concurrent clients overlap exactly and the caller can sample the
    ingest rate over the same window."""

    def __init__(self, size: int) -> None:
        self.procs = [subprocess.Popen([sys.executable, "-c", _CLIENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       text=True, cwd=ROOT) for _ in range(size)]
        for proc in self.procs:  # imports done before the first window is scheduled
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise SystemExit(f"a benchmark client did not start (code {proc.wait()})")

    def start(self, listen: str, jobs: list[tuple[Path, int]], seconds: float, lead_s: float = 0.5) -> float:
        """Send one job (request file, start index) per client; returns the window's start (time.time())."""
        start = time.time() + lead_s
        for proc, (requests, offset) in zip(self.procs, jobs, strict=False):
            assert proc.stdin is not None
            proc.stdin.write(json.dumps({"listen": listen, "requests": str(requests), "offset": offset,
                                         "start": start, "seconds": seconds}) + "\n")
            proc.stdin.flush()
        return start

    def collect(self, count: int) -> list[dict[str, Any]]:
        out = []
        for proc in self.procs[:count]:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line:
                raise SystemExit(f"a benchmark client exited (code {proc.wait()})")
            out.append(json.loads(line))
        return out

    def close(self) -> None:
        for proc in self.procs:
            if proc.stdin is not None:
                proc.stdin.close()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def sleep_until(wall: float) -> None:
    delay = wall - time.time()
    if delay > 0:
        time.sleep(delay)
