"""Query latency benchmark (docs/performance.md §Targets, P3/P4): prints one table and writes ops/bench/results/query.json.

    .venv/bin/python ops/bench/query_bench.py [--backend sqlite|postgresql|both] [--dsn DSN] [--seconds 6]
        [--rate 5000] [--flows 10000] [--hot-events 100000] [--workers N] [--quick]

PostgreSQL: ``--dsn`` (else $CTXPLANE_BENCH_PG_DSN, else $CTXPLANE_TEST_PG_DSN as exported by
``eval "$(ops/pg_up.sh)"``; stop it with ``ops/pg_down.sh``) names a server where the benchmark may
CREATE DATABASE: each backend run gets a fresh database, dropped afterwards. Without ``--backend``,
both backends run when that server is reachable, else SQLite only.

Per backend, a store is pre-loaded through ``ctxplane run --once`` (``--flows`` ready flows and one
hot instrument with ``--hot-events`` events over 7 days), then one long-running ``ctxplane run``
serves the Unix socket while separate client processes time requests (sorted samples; every client
of a phase times the same wall-clock window of ``--seconds``):
- ``resolve_flow_binding`` over the pre-loaded flows, and ``get_features`` for the hot key
  (3 windows x 2 groups: core_features + entity_velocity), each with 1 and with 2 concurrent clients;
- first idle, then while a publisher appends context events (new flows) at ``--rate`` events/s
  and the supervisor ingests them.
For every phase: the publish rate (head.json) and the applied rate (the ``basis`` op's committed
offsets, both planes) over the same window, and the 1-minute load average at its end.
Only public surfaces: the CLI, the file bus, the socket protocol. ``--workers N`` sets
``query.workers`` (omitted when not given). With the defaults a run of both backends takes about
3 minutes on 2 cores, most of it the 16 phases and the two pre-loads; ``--quick`` is a smoke run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from common import (
    CLI,
    RESULTS,
    ROOT,
    ClientPool,
    Supervisor,
    applied,
    drop_database,
    features_requests,
    fresh_dsn,
    percentiles,
    pg_admin_dsn,
    pg_reachable,
    preload,
    published,
    publisher,
    resolve_requests,
    sleep_until,
    write_config,
)

OPS = (("resolve_flow_binding", "READY"), ("get_features", "OK"))
CLIENTS = (1, 2)
SETTLE_S = 2.0  # publisher running before the first ingest window opens


def _phase(pool: ClientPool, basis_client: Any, listen: str, eb: Path, request_file: Path, requests: int,
           clients: int, seconds: float) -> dict[str, Any]:
    jobs = [(request_file, k * requests // clients) for k in range(clients)]
    start = pool.start(listen, jobs, seconds)
    sleep_until(start)
    t0, applied0, published0 = time.time(), applied(basis_client), published(eb)
    sleep_until(start + seconds)
    t1, applied1, published1 = time.time(), applied(basis_client), published(eb)
    results = pool.collect(clients)
    samples = [s for r in results for s in r["samples"]]
    statuses: dict[str, int] = {}
    for r in results:
        for key, count in r["statuses"].items():
            statuses[str(key)] = statuses.get(str(key), 0) + count
    return {**percentiles(samples), "clients": clients, "seconds": seconds,
            "requests_per_s": len(samples) / seconds, "per_client_n": [len(r["samples"]) for r in results],
            "client_late_s": max(r["late_s"] for r in results), "statuses": statuses,
            "published_per_s": (published1 - published0) / (t1 - t0),
            "applied_per_s": (applied1 - applied0) / (t1 - t0), "load_average": os.getloadavg()}


def bench_backend(backend: str, base_eb: Path, directory: Path, args: argparse.Namespace) -> dict[str, Any]:
    from ctxplane.runtime.client import Client

    work = directory / backend
    work.mkdir()
    eb = work / "eb"
    shutil.copytree(base_eb, eb)
    dsn = fresh_dsn(backend, work, args.dsn)
    extra = {"query": {"workers": args.workers}} if args.workers is not None else {}
    config = write_config(work, dsn, **extra)
    listen = f"unix:{work / 'q.sock'}"
    out: dict[str, Any] = {"load_average_start": os.getloadavg(), "phases": []}
    t = time.perf_counter()
    once = subprocess.run([*CLI, "run", "--config", str(config), "--once"], capture_output=True, text=True, cwd=ROOT)
    if once.returncode != 0:
        raise SystemExit(f"{backend}: ctxplane run --once exited {once.returncode}: {once.stderr.strip()[-2000:]}")
    out["preload_s"] = time.perf_counter() - t
    files = {}
    for op, reqs in (("resolve_flow_binding", resolve_requests(args.flows)), ("get_features", features_requests())):
        files[op] = (work / f"{op}.json", len(reqs))
        files[op][0].write_text(json.dumps(reqs))
    supervisor = Supervisor(config, listen, work / "run.log")
    pool = ClientPool(max(CLIENTS))
    pub = None
    try:
        with Client(listen, timeout_s=30) as basis_client:
            for load in ("idle", "ingest"):
                if load == "ingest":
                    pub = publisher(eb, args.rate, SETTLE_S + len(OPS) * len(CLIENTS) * (args.seconds + 2) + 30, args.flows + 1)
                    time.sleep(SETTLE_S)
                for op, expected in OPS:
                    for clients in CLIENTS:
                        phase = _phase(pool, basis_client, listen, eb, *files[op], clients, args.seconds)
                        out["phases"].append({"backend": backend, "op": op, "load": load, "expected_status": expected, **phase})
                        _progress(out["phases"][-1])
            out["backlog_at_end"] = published(eb) - applied(basis_client)
    finally:
        if pub is not None:
            pub.terminate()
            pub.wait()
        pool.close()
        supervisor.stop()
        if backend == "postgresql":
            drop_database(dsn, args.dsn)
    out["load_average_end"] = os.getloadavg()
    return out


def _progress(p: dict[str, Any]) -> None:
    print(f"  .. {p['backend']} {p['op']} {p['load']} x{p['clients']}: p50 {p['p50_ms']:.2f} p99 {p['p99_ms']:.2f} ms",
          file=sys.stderr, flush=True)


def _row(p: dict[str, Any]) -> str:
    other = sum(n for status, n in p["statuses"].items() if status != p["expected_status"])
    rates = f"{p['published_per_s']:>8,.0f} {p['applied_per_s']:>9,.0f}" if p["load"] == "ingest" else f"{'-':>8} {'-':>9}"
    return (f"{p['backend']:<10} {p['op']:<20} {p['load']:<6} {p['clients']:>2} {p['n']:>7} {p['requests_per_s']:>7,.0f} "
            f"{p['p50_ms']:>7.3f} {p['p99_ms']:>7.3f} {p['p999_ms']:>7.3f} {p['max_ms']:>7.1f} {other:>5} {rates} "
            f"{p['load_average'][0]:>5.2f}")


def table(result: dict[str, Any]) -> str:
    a = result["args"]
    lines = [
        f"query latency (ms, sorted samples from separate client processes over a Unix socket), {a['seconds']:g} s per phase; "
        f"{a['flows']} flows, hot key {a['hot_events']} events; ingest target {a['rate']:.0f} events/s; "
        f"query.workers {a['workers'] if a['workers'] is not None else '(not set)'}; {result['cpu_count']} CPUs",
        f"{'backend':<10} {'request':<20} {'load':<6} {'cl':>2} {'n':>7} {'req/s':>7} {'p50':>7} {'p99':>7} {'p99.9':>7} "
        f"{'max':>7} {'other':>5} {'pub/s':>8} {'applied/s':>9} {'load1':>5}",
    ]
    for backend in result["backends"].values():
        lines.extend(_row(p) for p in backend["phases"])
    lines.append("other = answers whose status is not READY (resolve) / OK (features); pub/s and applied/s = "
                 "events published / committed (basis op) per second in the same window; load1 = 1-min load average at its end")
    for name, backend in result["backends"].items():
        lines.append(f"{name}: pre-load {backend['preload_s']:.1f} s; load average {_load(backend['load_average_start'])} -> "
                     f"{_load(backend['load_average_end'])}; ingest backlog at end {backend['backlog_at_end']} events")
    lines.append(f"load average at start {_load(result['load_average_start'])}, at end {_load(result['load_average_end'])}")
    return "\n".join(lines)


def _load(values: tuple[float, float, float] | list[float]) -> str:
    return "/".join(f"{v:.2f}" for v in values)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default=None,
                        help="default: both when a PostgreSQL server is reachable, else sqlite")
    parser.add_argument("--dsn", default=None, help="PostgreSQL server DSN (default: $CTXPLANE_BENCH_PG_DSN, $CTXPLANE_TEST_PG_DSN)")
    parser.add_argument("--seconds", type=float, default=6.0,
                        help="measured seconds per phase, 8 phases per backend (more gives steadier p99.9)")
    parser.add_argument("--rate", type=float, default=5000, help="publish rate during the ingest phases, events/s")
    parser.add_argument("--flows", type=int, default=10000, help="ready flows pre-loaded (resolve_flow_binding targets)")
    parser.add_argument("--hot-events", type=int, default=100_000, help="events of the hot key (get_features target)")
    parser.add_argument("--workers", type=int, default=None, help="query.workers (omitted from the config when not given)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 s phases, 2000 flows, 10^4 hot-key events")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.flows, args.hot_events = 2.0, 2000, 10_000
    admin = pg_admin_dsn(args.dsn)
    args.dsn = admin
    reachable = pg_reachable(admin)
    if args.backend is None:
        args.backend = "both" if reachable else "sqlite"
        if not reachable:
            print("PostgreSQL: no reachable server (--dsn, $CTXPLANE_BENCH_PG_DSN or eval \"$(ops/pg_up.sh)\"); SQLite only",
                  file=sys.stderr)
    backends = ("sqlite", "postgresql") if args.backend == "both" else (args.backend,)
    if "postgresql" in backends and not reachable:
        where = f" at {urlsplit(admin).hostname}:{urlsplit(admin).port}" if admin else ""
        print(f"query_bench: --backend {args.backend}: no PostgreSQL server reachable{where} (--dsn, "
              "$CTXPLANE_BENCH_PG_DSN or eval \"$(ops/pg_up.sh)\")", file=sys.stderr)
        return 2
    result: dict[str, Any] = {
        "args": {k: v for k, v in vars(args).items() if k != "dsn"}, "cpu_count": os.cpu_count(),
        "load_average_start": os.getloadavg(), "backends": {},
    }
    directory = Path(tempfile.mkdtemp(prefix="ctxplane-qbench-"))
    try:
        base_eb = directory / "base-eb"
        print(f"  .. writing the pre-load bus ({3 * args.flows + args.hot_events} events)", file=sys.stderr, flush=True)
        preload(base_eb, args.flows, args.hot_events)
        for backend in backends:
            result["backends"][backend] = bench_backend(backend, base_eb, directory, args)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    result["load_average_end"] = os.getloadavg()
    text = table(result)
    result["table"] = text
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "query.json").write_text(json.dumps(result, indent=2))
    print(text)
    print(f"(written to {(RESULTS / 'query.json').relative_to(ROOT)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
