"""Helpers for the drill tests: the fault proxy as a process, RSS sampling, clean-pass comparisons."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from tests.support.process import ctxplane, write_config


@dataclass
class ProxyProcess:
    """``python -m ctxplane.actors.drills.faultproxy`` in a child process (what an operator runs)."""

    port: int
    control: str
    proc: subprocess.Popen[str]


@contextmanager
def fault_proxy(upstream_port: int, directory: Path) -> Iterator[ProxyProcess]:
    """Start the fault proxy in front of ``127.0.0.1:upstream_port``; stop it (by pid) on exit."""
    control = f"unix:{directory / 'proxy.ctl'}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ctxplane.actors.drills.faultproxy", "--listen", "127.0.0.1:0",
         "--upstream", f"127.0.0.1:{upstream_port}", "--control", control],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until the proxy listens (or exits)
        match = re.search(r"listening on [^:]+:(\d+)", line)
        assert match, f"fault proxy did not start: {line!r} {proc.stderr.read() if proc.poll() is not None else ''}"
        yield ProxyProcess(int(match.group(1)), control, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def rss_bytes(pid: int) -> int | None:
    """Resident set size of ``pid`` from /proc (None once the process is gone)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@dataclass
class RssSampler:
    """Samples a process's RSS every ``interval_s`` on a thread, labelled by ``phase()`` at the
    moment of the sample (e.g. the fault proxy's mode)."""

    pid: int
    phase: Callable[[], str]
    interval_s: float = 0.05
    samples: dict[str, list[int]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> RssSampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                label = self.phase()
            except OSError:
                continue  # the phase source is gone (proxy stopped): no label, no sample
            value = rss_bytes(self.pid)
            if value is not None:
                self.samples.setdefault(label, []).append(value)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def max_mb(self, phase: str) -> float:
        return max(self.samples.get(phase, [0])) / (1024 * 1024)


def drill(name: str, config: Path, *args: str, timeout: float = 180.0, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any], str]:
    """Run ``ctxplane drill NAME --config CONFIG ARGS --json``: (exit code, report, stderr)."""
    result = ctxplane("drill", name, "--config", str(config), *args, "--json", env=env, timeout=timeout)
    report = orjson.loads(result.stdout) if result.stdout.strip().startswith("{") else {}
    return result.returncode, report, result.stderr


def failed_checks(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in report.get("checks", []) if not c["ok"]]


def digests(config: Path) -> tuple[str, str]:
    """(state digest, ledger digest): the programs ``ctxplane digest [--ledger]`` runs, in process."""
    import anyio

    from ctxplane.actors.operate.digest import (
        ledger_digest_program,
        state_digest_program,
    )
    from ctxplane.config.settings import load_settings
    from ctxplane.runtime.store import open_store

    async def both() -> tuple[str, str]:
        async with await open_store(load_settings(config).store) as store:
            return await store.read(state_digest_program()), await store.read(ledger_digest_program())

    return anyio.run(both)


def clean_pass(directory: Path, eb: Path) -> Path:
    """A fresh SQLite store that consumed ``eb`` in one clean ``ctxplane run --once``."""
    directory.mkdir(parents=True, exist_ok=True)
    config = write_config(directory, f"sqlite:///{directory / 'clean.sqlite'}", bus={"root": str(eb)})
    result = ctxplane("run", "--config", str(config), "--once", timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    return config


def bus_records(eb: Path) -> tuple[int, int]:
    """(records on the bus, distinct (event_type, event_id) among the valid-looking ones)."""
    records, events = 0, set()
    for path in eb.glob("*/partition=*.jsonl"):
        for line in path.read_bytes().splitlines():
            if line.strip():
                records += 1
                try:
                    envelope = orjson.loads(line)["payload"]
                    events.add((envelope["event_type"], envelope["event_id"]))
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    continue
    return records, len(events)


def wait_until(condition: Any, timeout: float, what: str) -> Any:
    """Poll ``condition()`` until truthy; its value, or AssertionError naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)  # sync-ok: polling a condition with a deadline
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def pg_port_from_env() -> int | None:
    dsn = os.environ.get("CTXPLANE_TEST_PG_DSN")
    if not dsn:
        return None
    match = re.search(r"@[^:/]+:(\d+)/", dsn)
    return int(match.group(1)) if match else None
