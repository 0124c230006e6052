"""Progress and summaries of long work through the real CLI: `ctxplane run --once` and `ctxplane
replay` end with a summary whose counts are what the store took (on a fresh store: its intake
counters and its ledger rows by reason), write structured progress lines when stderr is not a
terminal, and keep stdout as it was (nothing for `run --once`, the one key=value line for `replay`).
On a terminal (a pty) they end with a human summary line. No assertion depends on timing."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.support.process import ctxplane, write_config
from tests.support.stores import query_rows
from tests.support.workload import (
    ANCHOR_BASELINE,
    ARRIVAL,
    TRAFFIC_FRAUD,
    append_raw,
    context_events,
    envelope,
    publish,
)

FLOWS = 40
PROGRESS_FIELDS = {"work", "events", "applied", "duplicates", "rejected", "events_per_s", "elapsed_s",
                   "remaining_total", "eta_s"}


def _bus(eb: Path) -> None:
    """Valid flows, some of them published twice (duplicates), and records intake or the store
    refuses for several reasons, on one partition per topic."""
    flows = [item for seq in range(1, FLOWS + 1) for item in context_events(seq)]
    mutated = dict(flows[0][1], payload={"merchant_id": "m-2", "arrival_seq": 1, "changed": True})
    missing_pins = envelope(ARRIVAL[1], {"merchant_id": "m-9", "arrival_seq": 900}, eid="7" * 64)
    del missing_pins["parameter_hash"]
    no_flow = envelope(ANCHOR_BASELINE[1], {"merchant_id": "m-9", "arrival_seq": 901}, eid="8" * 64)
    traffic = [(TRAFFIC_FRAUD[0], envelope(TRAFFIC_FRAUD[1], {"flow_id": f"t-{i}", "instrument_id": "inst-1",
                                                              "amount": 10.5}, eid=f"{i + 5000:064x}")) for i in range(8)]
    publish(eb, [*flows, *flows[:15], (ARRIVAL[0], mutated), (ARRIVAL[0], missing_pins), (ANCHOR_BASELINE[0], no_flow),
                 *traffic, *traffic[:3]], partitions=1)
    append_raw(eb, ARRIVAL[0], 0, b"not json\n[1, 2]\n")


def _events(stderr: str) -> list[dict[str, Any]]:
    found = []
    for line in stderr.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            found.append(event)
    return found


def _store_counts(config: Path) -> tuple[dict[str, int], dict[str, int]]:
    """(intake counters by name, ledger rows by reason for the reasons that reject a record)."""
    from ctxplane.config.settings import load_settings

    dsn = load_settings(config).store.dsn
    counters = {str(name): int(value) for name, value in query_rows(dsn, "SELECT name, sum(value) FROM intake_counters GROUP BY name")}
    ledger = {str(reason): int(n) for reason, n in query_rows(
        dsn, "SELECT reason_code, count(*) FROM apply_failures WHERE reason_code NOT LIKE 'LATE_%'"
             " AND reason_code NOT LIKE '%_CONFLICT' GROUP BY reason_code")}
    return counters, ledger


def _assert_summary_is_the_store(summary: dict[str, Any], config: Path) -> None:
    counters, ledger = _store_counts(config)
    assert summary["completed"] is True
    assert summary["applied"] == counters["applied"] and summary["duplicates"] == counters["duplicate"]
    assert summary["rejected"] == counters.get("rejected", 0) + counters.get("payload_hash_mismatch", 0)
    assert summary["events"] == sum(counters.values())
    assert summary["rejected_by_reason"] == ledger
    assert sum(summary["rejected_by_reason"].values()) == summary["rejected"]
    assert summary["seconds"] > 0 and summary["events_per_s"] > 0


def test_run_once_ends_with_the_store_s_counts_and_writes_structured_progress(tmp_path: Path, store_dsn: str) -> None:
    config = write_config(tmp_path, store_dsn)
    _bus(tmp_path / "eb")
    run = ctxplane("run", "--config", str(config), "--once", "--progress-every", "0.2")
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout == ""  # unchanged: nothing on stdout
    events = _events(run.stderr)
    progress = [e for e in events if e.get("event") == "progress"]
    assert progress, "the first progress line is written when the work starts"
    for line in progress:
        assert PROGRESS_FIELDS <= line.keys() and line["work"] == "run --once" and line["level"] == "info"
        assert set(line["remaining"]) <= {"join", "features"} and "partitions_drained" in line
    (summary,) = [e for e in events if e.get("event") == "summary"]
    assert summary["work"] == "run --once" and summary["partitions_drained"] == "5/5"  # one partition per topic published
    _assert_summary_is_the_store(summary, config)
    assert summary["duplicates"] == 15 + 3 and summary["applied"] == 3 * FLOWS + 8
    assert set(summary["rejected_by_reason"]) == {"INTAKE_PAYLOAD_HASH_MISMATCH", "REQUIRED_PINS_MISSING",
                                                 "FLOW_ID_MISSING", "ENVELOPE_MISSING"}
    # Again: the checkpoints are at the end, so this run's summary says it found nothing to do.
    again = ctxplane("run", "--config", str(config), "--once", "--progress-every", "0")
    (summary,) = [e for e in _events(again.stderr) if e.get("event") == "summary"]
    assert not [e for e in _events(again.stderr) if e.get("event") == "progress"]  # 0: no progress lines
    assert (summary["events"], summary["applied"], summary["rejected_by_reason"]) == (0, 0, {})


def test_replay_ends_with_the_store_s_counts_and_keeps_its_stdout_line(tmp_path: Path) -> None:
    live = write_config(tmp_path, f"sqlite:///{tmp_path / 'live.sqlite'}")
    _bus(tmp_path / "eb")
    assert ctxplane("run", "--config", str(live), "--once").returncode == 0
    manifest = ctxplane("checkpoint", "manifest", "--config", str(live))
    (tmp_path / "rebuild.json").write_text(manifest.stdout)
    fresh_dir = tmp_path / "fresh"
    fresh_dir.mkdir()
    fresh = write_config(fresh_dir, f"sqlite:///{fresh_dir / 'fresh.sqlite'}", bus={"root": str(tmp_path / "eb")})
    replay = ctxplane("replay", "--config", str(fresh), "--manifest", str(tmp_path / "rebuild.json"),
                      "--progress-every", "0.2")
    assert replay.returncode == 0, replay.stderr[-3000:]
    line = dict(field.split("=", 1) for field in replay.stdout.split())
    assert list(line) == ["replay_id", "events_read", "applied", "duplicates", "rejected", "basis_digest",
                          "events_per_s", "seconds"]
    events = _events(replay.stderr)
    progress = [e for e in events if e.get("event") == "progress"]
    assert progress and all(PROGRESS_FIELDS <= e.keys() and set(e["remaining"]) <= {"join", "features"}
                            for e in progress)
    (summary,) = [e for e in events if e.get("event") == "summary"]
    assert summary["work"] == "replay" and summary["replay_id"] == line["replay_id"]
    assert (str(summary["events"]), str(summary["applied"]), str(summary["duplicates"]), str(summary["rejected"])) == (
        line["events_read"], line["applied"], line["duplicates"], line["rejected"])
    _assert_summary_is_the_store(summary, fresh)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a Linux pty")
def test_on_a_terminal_the_work_ends_with_a_human_summary_line(tmp_path: Path, sqlite_dsn: str) -> None:
    config = write_config(tmp_path, sqlite_dsn, logging={"format": "console"})
    _bus(tmp_path / "eb")
    primary, secondary = pty.openpty()
    with subprocess.Popen([sys.executable, "-m", "ctxplane.actors.app.cli", "run", "--config", str(config), "--once"],
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=secondary) as proc:
        os.close(secondary)
        screen = _read_all(primary)
        out = proc.stdout.read() if proc.stdout is not None else b""
    assert proc.returncode == 0, screen[-3000:]
    assert out == b""
    counters, _ledger = _store_counts(config)
    text = screen.decode("utf-8", "replace")
    # The live line's last render and the summary line: both written however fast the run was.
    assert "run --once" in text and "events/s" in text
    summary = next(line for line in text.splitlines() if line.startswith("run --once: "))
    assert f"applied {counters['applied']:,}; duplicates {counters['duplicate']:,}; rejected " in summary
    assert "REQUIRED_PINS_MISSING 1" in summary


def _read_all(fd: int) -> bytes:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the child closed its end
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)


def test_the_counts_of_a_run_are_one_per_record(tmp_path: Path) -> None:
    """Every record of the bus is counted once, in exactly one outcome (the summary's events)."""
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 's.sqlite'}")
    _bus(tmp_path / "eb")
    run = ctxplane("run", "--config", str(config), "--once", "--progress-every", "0")
    (summary,) = [e for e in _events(run.stderr) if e.get("event") == "summary"]
    lines = Counter()
    for path in (tmp_path / "eb").glob("*/partition=*.jsonl"):
        lines[path.parent.name] += sum(1 for raw in path.read_bytes().splitlines() if raw.strip())
    assert summary["events"] == sum(lines.values())
