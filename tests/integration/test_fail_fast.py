"""Fail fast and say why: a drill with no server running ends at once (no 30 s wait for a controller
that cannot answer), and a `run` whose planes find none of their topics on the bus warns."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from tests.support.process import ctxplane, write_config
from tests.support.workload import ARRIVAL, context_events, publish

# A guard against a hang only: the old behaviour waited 30 s for a controller before giving up.
GUARD_S = 20.0


def test_a_drill_with_no_server_fails_at_once_naming_the_endpoint(tmp_path: Path) -> None:
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 's.sqlite'}", drills={"enabled": True})
    listen = f"unix:{tmp_path / 'q.sock'}"
    absent = ctxplane("drill", "offset-rollback", "--config", str(config), "--by", "1", timeout=GUARD_S)
    assert absent.returncode == 1
    assert absent.stderr == (f"ctxplane: cannot reach the query endpoint {listen}: No such file or directory:"
                             " no `ctxplane run` serves it (start one with drills.enabled: true)\n")
    # A socket file left behind by a process that is gone: refused, also at once.
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / "q.sock"))
    stale.close()
    refused = ctxplane("drill", "conflict-storm", "--config", str(config), timeout=GUARD_S)
    assert refused.returncode == 1 and "Connection refused" in refused.stderr, refused.stderr


def test_a_run_whose_plane_finds_none_of_its_topics_on_the_bus_warns(tmp_path: Path) -> None:
    typo = "fp.bus.context.arival_events.v1"
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 's.sqlite'}", join_plane={"topics": [typo]})
    publish(tmp_path / "eb", context_events(1)[:1])  # the arrival topic exists, spelt right
    run = ctxplane("run", "--config", str(config), "--once")
    assert run.returncode == 0, run.stderr[-2000:]
    warnings = _warnings(run.stderr)
    join = [e for e in warnings if e.get("plane") == "join"]
    assert len(join) == 1 and join[0]["event"].startswith("no topic of this plane exists on the bus")
    assert join[0]["topics"] == [typo] and join[0]["unread_topics_on_bus"] == [ARRIVAL[0]]
    # The feature plane finds none of its topics either: warned the same way.
    assert [e["topics"] for e in warnings if e.get("plane") == "features"] == [
        ["fp.bus.traffic.baseline.v1", "fp.bus.traffic.fraud.v1"]]
    # Once its topics exist, no warning.
    fixed = write_config(tmp_path, f"sqlite:///{tmp_path / 's.sqlite'}", features={"enabled": False})
    quiet = ctxplane("run", "--config", str(fixed), "--once")
    assert quiet.returncode == 0 and _warnings(quiet.stderr) == [], quiet.stderr[-2000:]


def _warnings(log: str) -> list[dict[str, Any]]:
    events = []
    for line in log.splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return [e for e in events if isinstance(e, dict) and e.get("level") == "warning"]
