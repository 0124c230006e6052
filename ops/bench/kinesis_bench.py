"""Kinesis ingest benchmark: events/s with 1, 2 and 3 `ctxplane run` processes sharing the streams
and one PostgreSQL store (fenced leases), against the emulator's own ceiling measured in the same run.

    .venv/bin/python ops/bench/kinesis_bench.py [--flows 4000] [--shards 4] [--runs 1]

Starts its own loopback emulator (ops/kinesis_up.sh) and PostgreSQL (ops/pg_up.sh) unless
CTXPLANE_TEST_KINESIS_ENDPOINT / CTXPLANE_TEST_PG_DSN are set, and stops what it started.
Prints a table and writes ops/bench/results/kinesis.json.

What is measured:
- ceiling: raw GetRecords throughput of the emulator — one process, every shard of every stream
  read concurrently from TRIM_HORIZON with Limit=10000 and no pacing (what the emulator can serve;
  ctxplane itself paces each shard to 5 GetRecords/s as Kinesis requires);
- ctxplane: the demo workload (both planes, 6 topics × ``--shards`` shards) published once; each
  run starts N processes at once on a fresh PostgreSQL database and times from the first
  "running" log line until the dedupe registry holds every event (polled every 50 ms), events/s;
- the same with one process on SQLite (no leases) for reference.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "ops" / "bench" / "results"
AWS_ENV = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true"}


def _servers(stack: list[tuple[str, dict[str, str]]]) -> tuple[str, str]:
    """(kinesis endpoint, postgres admin dsn), starting what the environment does not name."""
    endpoint = os.environ.get("CTXPLANE_TEST_KINESIS_ENDPOINT")
    dsn = os.environ.get("CTXPLANE_TEST_PG_DSN")
    for script, name, present in (("ops/kinesis_up.sh", "kinesis", endpoint), ("ops/pg_up.sh", "pg", dsn)):
        if present:
            continue
        out = subprocess.run(["bash", script], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        env: dict[str, str] = {}
        for line in out.splitlines():  # `export A=1` and `export A=1 B=2` lines
            for pair in line.removeprefix("export ").split():
                key, _, value = pair.partition("=")
                env[key] = value
        stack.append((name, env))
        os.environ.update(env)
    return os.environ["CTXPLANE_TEST_KINESIS_ENDPOINT"], os.environ["CTXPLANE_TEST_PG_DSN"]


def _stop(stack: list[tuple[str, dict[str, str]]]) -> None:
    for name, env in reversed(stack):
        script = "ops/kinesis_down.sh" if name == "kinesis" else "ops/pg_down.sh"
        subprocess.run(["bash", script], cwd=ROOT, env={**os.environ, **env}, check=False)


def _fresh_pg(admin: str, name: str) -> str:
    import asyncpg

    async def create() -> None:
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    anyio.run(create)
    return admin.rsplit("/", 1)[0] + "/" + name


async def _ceiling(endpoint: str, streams: dict[str, str]) -> dict[str, Any]:
    """Raw GetRecords throughput: all shards concurrently, no pacing."""
    import aioboto3
    from botocore.config import Config

    session = aioboto3.Session()
    records = calls = 0
    async with session.client("kinesis", endpoint_url=endpoint, region_name="us-east-1",
                              config=Config(retries={"total_max_attempts": 1, "mode": "standard"},
                                            max_pool_connections=64)) as client:
        shards = []
        for stream in streams.values():
            async for page in client.get_paginator("list_shards").paginate(StreamName=stream):
                shards += [(stream, s["ShardId"]) for s in page["Shards"]]

        async def drain(stream: str, shard: str) -> None:
            nonlocal records, calls
            it = (await client.get_shard_iterator(StreamName=stream, ShardId=shard,
                                                  ShardIteratorType="TRIM_HORIZON"))["ShardIterator"]
            while it:
                answer = await client.get_records(ShardIterator=it, Limit=10000)
                calls += 1
                records += len(answer["Records"])
                if not answer["Records"]:
                    return
                it = answer.get("NextShardIterator")

        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for stream, shard in shards:
                tg.start_soon(drain, stream, shard)
        elapsed = time.perf_counter() - started
    return {"records": records, "get_records_calls": calls, "seconds": round(elapsed, 3),
            "records_per_s": round(records / elapsed)}


def _config(directory: Path, dsn: str, endpoint: str, streams: dict[str, str]) -> Path:
    import yaml

    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "store": {"dsn": dsn}, "bus": {"kind": "kinesis", "endpoint_url": endpoint, "region": "us-east-1",
                                       "streams": streams},
        "query": {"listen": f"unix:{directory / 'q.sock'}"}, "metrics": {"listen": None},
        "logging": {"format": "json", "level": "info"}, "health": {"artifact_root": str(directory / "art")},
        "leases": {"duration_s": 10, "renew_every_s": 1},
    }
    path = directory / "ctxplane.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _applied(dsn: str) -> int:
    from ctxplane.runtime.exceptions import StoreError
    from tests.support.stores import query_rows

    try:
        return int(str(query_rows(dsn, "SELECT count(*) FROM intake_dedupe")[0][0]))
    except StoreError:  # the schema does not exist yet while the processes start
        return 0


def _running_at(process: Any) -> float:
    from datetime import datetime

    for event in process.events():
        if event.get("event") == "running":
            return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()
    raise RuntimeError("process never logged running")


def _run(configs: list[Path], dsn: str, total: int, timeout: float = 600.0) -> dict[str, Any]:
    """Start every process at once; time from the first "running" line to the last event applied."""
    import threading

    from tests.support.process import CtxplaneProcess

    procs = [CtxplaneProcess(config, env=AWS_ENV) for config in configs]
    try:
        threads = [threading.Thread(target=p.start, kwargs={"timeout": 60}) for p in procs]
        for thread in threads:
            thread.start()
        deadline = time.time() + timeout
        while (done := _applied(dsn)) < total:
            if time.time() > deadline:
                raise RuntimeError(f"only {done}/{total} events after {timeout}s")
            time.sleep(0.05)
        finished = time.time()
        for thread in threads:
            thread.join()
        elapsed = finished - min(_running_at(p) for p in procs)
    finally:
        for process in procs:
            process.stop(60)
    return {"events": total, "seconds": round(elapsed, 3), "events_per_s": round(total / elapsed)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", type=int, default=4000)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    os.environ.update(AWS_ENV)
    from ctxplane.actors.operate.demo_workload import generate
    from tests.support.kinesis import publish_kinesis, stream_names

    stack: list[tuple[str, dict[str, str]]] = []
    try:
        endpoint, admin = _servers(stack)
        workload = generate(args.flows)
        total = sum(len(v) for v in workload.values())
        streams = stream_names(list(workload))
        t = time.perf_counter()
        anyio.run(lambda: publish_kinesis(endpoint, streams, workload, shards=args.shards))
        publish_s = time.perf_counter() - t
        ceiling = anyio.run(_ceiling, endpoint, streams)
        rows: dict[str, Any] = {}
        with tempfile.TemporaryDirectory(prefix="ctxplane-kbench-") as tmp:
            base = Path(tmp)
            samples: dict[str, list[dict[str, Any]]] = {}
            for run in range(args.runs):
                sqlite_dsn = f"sqlite:///{base / f'sqlite-{run}.sqlite'}"
                samples.setdefault("1 process, SQLite (no leases)", []).append(
                    _run([_config(base / f"s{run}", sqlite_dsn, endpoint, streams)],
                         f"sqlite:///{base / f'sqlite-{run}.sqlite'}", total))
                for n in (1, 2, 3):
                    dsn = _fresh_pg(admin, f"kbench_{os.getpid()}_{run}_{n}")
                    configs = [_config(base / f"r{run}n{n}p{i}", dsn, endpoint, streams) for i in range(n)]
                    samples.setdefault(f"{n} process{'es' if n > 1 else ''}, PostgreSQL, leases", []).append(
                        _run(configs, dsn, total))
            for name, runs in samples.items():
                rates = [r["events_per_s"] for r in runs]
                rows[name] = {"median_events_per_s": round(statistics.median(rates)), "samples": runs}
    finally:
        _stop(stack)
    result = {
        "benchmark": "kinesis",
        "flows": args.flows, "events": total, "topics": len(workload), "shards_per_topic": args.shards,
        "partitions": len(workload) * args.shards, "runs": args.runs,
        "emulator": "moto server 5.2 (ops/kinesis_emulator.py), loopback",
        "python": platform.python_version(), "cpus": os.cpu_count(),
        "publish_seconds": round(publish_s, 3),
        "ceiling_raw_get_records": ceiling,
        "ctxplane": rows,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "kinesis.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"{total} events, {len(workload)} topics x {args.shards} shards, {os.cpu_count()} CPUs")
    print(f"{'what':<44} {'events/s':>10} {'seconds':>9}")
    print(f"{'emulator ceiling: raw GetRecords, no pacing':<44} {ceiling['records_per_s']:>10} {ceiling['seconds']:>9}")
    for name, row in rows.items():
        print(f"{name:<44} {row['median_events_per_s']:>10} {row['samples'][0]['seconds']:>9}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
