"""A real `ctxplane run` process for integration and chaos tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import yaml


def write_config(directory: Path, dsn: str, **sections: dict[str, Any]) -> Path:
    """Write a config file into ``directory`` (file bus at ``directory/eb``, socket ``directory/q.sock``)."""
    config: dict[str, Any] = {
        "store": {"dsn": dsn},
        "bus": {"root": str(directory / "eb")},
        # Generous waits: tests wait for commits on a loaded CI machine (the default cap is 5 s).
        "query": {"listen": f"unix:{directory / 'q.sock'}", "max_deadline_ms": 60_000},
        "metrics": {"listen": None},
        "logging": {"format": "json", "level": "info"},
        "ingest": {"poll_interval_ms": 10},
        "health": {"artifact_root": str(directory / "artifacts")},
    }
    for name, values in sections.items():
        config.setdefault(name, {}).update(values)
    path = directory / "ctxplane.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def ctxplane(*args: str, env: dict[str, str] | None = None, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run one ctxplane CLI command to completion."""
    return subprocess.run(
        [sys.executable, "-m", "ctxplane.actors.app.cli", *args], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )


class CtxplaneProcess:
    """``ctxplane run`` in a child process; ``start()`` returns once it logged that it is running.

    ``command`` runs another sub-command instead (e.g. ``("replay", "--config", ...)``) with
    ``ready_event`` the log event ``start()`` waits for; :meth:`wait_for_event` waits for any
    other one (JSON logs: ``logging.format: json``).
    """

    def __init__(self, config: Path, *extra: str, env: dict[str, str] | None = None,
                 command: tuple[str, ...] | None = None, ready_event: str = "running") -> None:
        self.config = config
        argv = command if command is not None else ("run", "--config", str(config), *extra)
        self.args = [sys.executable, "-m", "ctxplane.actors.app.cli", *argv]
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self._ready_event = ready_event
        self._running = threading.Event()
        self._changed = threading.Condition()
        self._ended = False
        self._reader: threading.Thread | None = None

    def start(self, timeout: float = 30.0) -> CtxplaneProcess:
        self.proc = subprocess.Popen(self.args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=self.env)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._running.wait(timeout):
            self.kill()
            raise AssertionError(f"ctxplane did not log {self._ready_event!r}:\n" + "\n".join(self.lines[-30:]))
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        ready = (f'"event": "{self._ready_event}"', f'"event":"{self._ready_event}"')
        for line in self.proc.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
            if any(marker in line for marker in ready):
                self._running.set()
        with self._changed:
            self._ended = True
            self._changed.notify_all()
        self._running.set()  # the process ended: stop waiting either way

    def wait_for_event(self, event: str, timeout: float = 60.0) -> dict[str, Any]:
        """Block until the process logs ``event`` (a JSON log line); returns that line.

        Raises:
            AssertionError: the process ended, or ``timeout`` passed (a hang guard), first.
        """
        def found() -> dict[str, Any] | None:
            return next((e for e in self.events() if e.get("event") == event), None)

        with self._changed:
            if not self._changed.wait_for(lambda: found() is not None or self._ended, timeout):
                raise AssertionError(f"no {event!r} log line within {timeout} s:\n" + "\n".join(self.lines[-30:]))
            line = found()
        if line is None:
            raise AssertionError(f"ctxplane ended without logging {event!r}:\n" + "\n".join(self.lines[-30:]))
        return line

    def send_signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def wait(self, timeout: float = 60.0) -> int:
        """Wait for the process to exit on its own (``--once``)."""
        assert self.proc is not None
        code = self.proc.wait(timeout)
        if self._reader is not None:
            self._reader.join(5)
        return code

    def stop(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        if self._reader is not None:
            self._reader.join(5)
        return code

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self._reader is not None:
            self._reader.join(5)

    def __enter__(self) -> CtxplaneProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.stop()
