"""The store and the reconciliation artifact are owner-only files, whatever the umask."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from tests.support.process import CtxplaneProcess, write_config
from tests.support.workload import context_events, publish


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_sqlite_store_its_wal_and_the_artifact_are_0600(tmp_path: Path) -> None:
    db = tmp_path / "s.sqlite"
    config = write_config(tmp_path, f"sqlite:///{db}", health={"artifact_root": str(tmp_path / "artifacts")})
    publish(tmp_path / "eb", context_events(3))
    previous = os.umask(0o022)  # a permissive umask: the files must not depend on it
    try:
        with CtxplaneProcess(config):
            wal = db.with_name(db.name + "-wal")
            assert _mode(db) == 0o600
            if wal.exists():  # present while the writer holds the database open
                assert _mode(wal) == 0o600
    finally:
        os.umask(previous)
    artifacts = list((tmp_path / "artifacts").rglob("reconciliation.json"))
    assert artifacts, "the reconciliation artifact is written at shutdown"
    assert {_mode(p) for p in artifacts} == {0o600}
