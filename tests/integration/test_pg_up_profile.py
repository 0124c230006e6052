"""`ops/pg_up.sh` on a port other than the 55432 that config/profiles/postgres.yaml names: with
--export-dsn it exports the CTXPLANE__STORE__DSN that points the profile at the server it started,
and the profile then works as it is (a real `ctxplane migrate` through it)."""

from __future__ import annotations

import glob
import os
import shlex
import socket
import subprocess
from pathlib import Path

import pytest

from tests.support.process import ctxplane

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(not glob.glob("/usr/lib/postgresql/*/bin/initdb"), reason="PostgreSQL is not installed")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _exports(text: str) -> dict[str, str]:
    found = {}
    for line in text.splitlines():
        assert line.startswith("export "), line  # stdout is only what `eval` should run
        name, _, value = line.removeprefix("export ").partition("=")
        found[name] = shlex.split(value)[0]
    return found


def test_pg_up_exports_the_profile_dsn_for_the_port_it_chose() -> None:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "CTXPLANE_"))}
    up = subprocess.run(["bash", "ops/pg_up.sh", "--export-dsn"], cwd=ROOT, capture_output=True, text=True,
                        env={**env, "PGPORT": str(port)}, timeout=120)
    assert up.returncode == 0, up.stderr
    exported = _exports(up.stdout)
    try:
        assert exported["CTXPLANE__STORE__DSN"] == f"postgresql://postgres@127.0.0.1:{port}/ctxplane"
        migrate = ctxplane("migrate", "--config", str(ROOT / "config/profiles/postgres.yaml"),
                           env={"CTXPLANE__STORE__DSN": exported["CTXPLANE__STORE__DSN"]})
        assert migrate.returncode == 0, migrate.stderr
        assert migrate.stdout.startswith(("applied migrations: ", "schema is up to date"))
    finally:
        subprocess.run(["bash", "ops/pg_down.sh"], cwd=ROOT, env={**env, **exported}, check=True, timeout=60)


def test_pg_up_refuses_an_unknown_argument_before_starting_anything() -> None:
    result = subprocess.run(["bash", "ops/pg_up.sh", "--nonsense"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and result.stdout == "" and "--export-dsn" in result.stderr
