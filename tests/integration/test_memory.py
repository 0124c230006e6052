"""Memory bounds of a real `ctxplane run --once` (docs/performance.md §Targets, P7), as peak RSS.

Peak RSS is the process's whole-life high-water mark (``ru_maxrss`` from ``wait4``), not a sample,
so the checks depend on no timing. Once, one 400 MB bus line took the process to 1.26 GB (lines
were read whole before the size check) and a 10^6-event burst to 1.3 GB (decoded records in
flight plus SQLite's 128 MiB page cache and 1 GiB memory map per connection).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ctxplane.actors.operate.demo_workload import write_demo_bus
from ctxplane.contracts.intake import MAX_RECORD_BYTES
from tests.support.process import write_config
from tests.support.stores import query_rows
from tests.support.workload import ARRIVAL, context_events, publish

_MIB = 1024 * 1024


# Measures from a small intermediate process: ru_maxrss keeps its high-water mark across exec, so
# a child forked straight from this (large) test process would report the test process's RSS.
_MEASURE = (
    "import os, subprocess, sys\n"
    "proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)\n"
    "_pid, status, usage = os.wait4(proc.pid, 0)\n"
    "print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)\n"
)


def _run_once_peak_rss_mb(config: Path) -> float:
    """Run `ctxplane run --once` to its end; its peak RSS in MiB (it must exit 0)."""
    result = subprocess.run(
        [sys.executable, "-c", _MEASURE, sys.executable, "-m", "ctxplane.actors.app.cli", "run", "--config", str(config),
         "--once"], capture_output=True, text=True, timeout=300)
    code, max_rss_kib = map(int, result.stdout.split())
    assert code == 0, result.stderr[-2000:]
    return max_rss_kib / 1024  # ru_maxrss is in KiB on Linux


def _config(tmp_path: Path, **sections: dict[str, object]) -> Path:
    return write_config(tmp_path, f"sqlite:///{tmp_path / 'store.sqlite'}", **sections)


def test_a_huge_bus_line_is_ledgered_without_being_read_into_memory(tmp_path: Path) -> None:
    config = _config(tmp_path, features={"enabled": False})
    eb = tmp_path / "eb"
    publish(eb, context_events(1), partitions=1)
    line_mb = 128
    path = eb / ARRIVAL[0] / "partition=0.jsonl"
    with path.open("ab") as fh:
        for _ in range(line_mb):
            fh.write(b"x" * _MIB)
        fh.write(b"\n")
    publish(eb, context_events(2), partitions=1)
    peak = _run_once_peak_rss_mb(config)
    assert peak < line_mb, f"peak RSS {peak:.0f} MiB: the {line_mb} MiB line was held in memory"
    rows = query_rows(f"sqlite:///{tmp_path / 'store.sqlite'}",
                      "SELECT topic, source_offset, reason_code, details_json FROM apply_failures")
    assert rows == [(ARRIVAL[0], "1", "ENVELOPE_MISSING",
                     f'{{"error":"record of {line_mb * _MIB} bytes exceeds {MAX_RECORD_BYTES}"}}')]
    # The records on both sides of it were applied: it cost one ledger row, nothing else.
    frames = query_rows(f"sqlite:///{tmp_path / 'store.sqlite'}",
                        "SELECT count(DISTINCT arrival_seq) FROM join_frame_roles WHERE role = 'arrival_event'")
    assert frames == [(2,)]


def test_a_burst_of_100k_events_stays_under_the_p7_bound(tmp_path: Path) -> None:
    """10^5 events waiting on 24 partitions (both planes) when the process starts: peak RSS under
    300 MB (P7 allows that at 10^6; the same run reached 388 MB with the old defaults)."""
    eb = tmp_path / "eb"
    counts = write_demo_bus(eb, 20_000, partitions=4)
    config = _config(tmp_path, bus={"root": str(eb)}, store={"synchronous": "NORMAL"})
    peak = _run_once_peak_rss_mb(config)
    assert peak < 300, f"peak RSS {peak:.0f} MiB"
    applied = query_rows(f"sqlite:///{tmp_path / 'store.sqlite'}",
                         "SELECT sum(value) FROM intake_counters WHERE name IN ('applied', 'duplicate', 'rejected', 'ignored')")
    assert applied == [(sum(counts.values()),)]


def test_sqlite_connections_use_the_configured_memory_bounds(tmp_path: Path) -> None:
    import anyio

    from ctxplane.config.settings import StoreSettings
    from ctxplane.runtime.store import Fetch, open_store

    def pragmas():  # type: ignore[no-untyped-def]
        cache = yield Fetch("PRAGMA cache_size")
        mmap = yield Fetch("PRAGMA mmap_size")
        return cache[0][0], mmap[0][0]

    async def read(settings: StoreSettings) -> tuple[int, int]:
        async with await open_store(settings) as store:
            return await store.read(pragmas())  # type: ignore[no-any-return]

    dsn = f"sqlite:///{tmp_path / 'store.sqlite'}"
    assert anyio.run(read, StoreSettings(dsn=dsn)) == (-32 * 1024, 0)  # KiB; no memory map
    assert anyio.run(read, StoreSettings(dsn=dsn, sqlite_cache_mb=8, sqlite_mmap_mb=16)) == (-8 * 1024, 16 * _MIB)
