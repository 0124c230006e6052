"""Health recovers: counted signals count over the policy window and after the
operator's last acknowledgement, through a real `ctxplane run` and the real CLI."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from ctxplane.contracts.timestamps import now_utc, parse_ts_us
from ctxplane.runtime.client import Client
from tests.support.process import CtxplaneProcess, ctxplane, write_config
from tests.support.workload import ANCHOR_FRAUD, BASE_TS, PINS, context_events, envelope, publish

STORM = 6  # conflicting anchors: 12 FLOW_BINDING_CONFLICT rows, RED for binding conflicts and apply failures


def _now_offset_s() -> float:
    """Event times of "now": a fresh watermark, so no replay advisory clouds the verdict."""
    return (parse_ts_us(now_utc()) - BASE_TS) / 1e6


def _conflict(seq: int, ts_s: float) -> tuple[str, dict[str, Any]]:
    """A second anchor for arrival ``seq`` under another flow id: a binding conflict."""
    payload = {"merchant_id": f"m-{(seq % 7) + 1}", "arrival_seq": seq, "flow_id": f"flow-{seq}-dup"}
    return ANCHOR_FRAUD[0], envelope(ANCHOR_FRAUD[1], payload, eid=f"{seq + 9000:064x}", ts_s=ts_s)


def _storm(eb: Path, ts_s: float) -> None:
    items = [item for seq in range(1, 11) for item in context_events(seq, ts_s=ts_s)]
    publish(eb, items + [_conflict(seq, ts_s) for seq in range(1, STORM + 1)], partitions=1)


def _health(client: Client) -> dict[str, Any]:
    return client.request({"op": "health"})["health"]  # type: ignore[no-any-return]


def _until(predicate: Any, what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, what
        time.sleep(0.05)  # sync-ok: polling a condition with a deadline


def _caught_up(client: Client) -> dict[str, Any]:
    """Health once every ledger row of the storm is counted (the last flow READY first)."""
    ready = client.request({"op": "resolve_flow_binding", "pins": PINS, "flow_id": "flow-10", "wait_ms": 20_000})
    assert ready["status"] == "READY", ready
    return _until(lambda: (h := _health(client))["anomaly_counts"].get("FLOW_BINDING_CONFLICT") == 2 * STORM and h,
                  "the conflict storm was not counted")


def test_an_acknowledgement_returns_health_to_green_is_audited_and_outlives_a_restart(tmp_path: Path) -> None:
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'store.sqlite'}")
    ts_s = _now_offset_s()
    _storm(tmp_path / "eb", ts_s)
    with CtxplaneProcess(config), Client(f"unix:{tmp_path / 'q.sock'}") as client:
        health = _caught_up(client)
        assert health["state"] == "RED"
        assert health["reasons"] == ["APPLY_FAILURES_RED", "BINDING_CONFLICTS_RED"]
        assert health["acknowledged"] is None

        acked = ctxplane("ack", "--config", str(config), "--by", "alice", "--reason", "conflict-storm drill")
        assert acked.returncode == 0, acked.stderr
        assert acked.stdout.startswith("acknowledged by alice at ")
        assert acked.stdout.rstrip().endswith(": RED (APPLY_FAILURES_RED, BINDING_CONFLICTS_RED) -> GREEN")

        health = _health(client)
        assert (health["state"], health["reasons"]) == ("GREEN", [])
        assert health["acknowledged"]["by"] == "alice" and health["counted_since_utc"] == health["acknowledged"]["acked_at_utc"]
        assert health["anomaly_counts"]["FLOW_BINDING_CONFLICT"] == 2 * STORM  # nothing is forgotten
        assert health["recent_anomaly_counts"] == {}
        status = ctxplane("status", "--config", str(config))
        assert status.returncode == 0 and status.stdout.startswith("health: GREEN")
        assert "acknowledged by alice at " in status.stdout

        # The audit trail: one durable line per acknowledgement, with what it acknowledged.
        audit = [json.loads(line) for line in (tmp_path / "artifacts" / "any-run" / "health_acks.jsonl").read_text().splitlines()]
        assert len(audit) == 1
        assert {k: audit[0][k] for k in ("by", "reason", "state", "reasons")} == {
            "by": "alice", "reason": "conflict-storm drill", "state": "RED",
            "reasons": ["APPLY_FAILURES_RED", "BINDING_CONFLICTS_RED"]}

        # A conflict after the acknowledgement counts again.
        publish(tmp_path / "eb", [_conflict(STORM + 1, ts_s)], partitions=1)
        health = _until(lambda: (h := _health(client))["state"] != "GREEN" and h, "the new conflict was not counted")
        assert health["state"] == "AMBER" and set(health["reasons"]) == {"APPLY_FAILURES_AMBER", "BINDING_CONFLICTS_AMBER"}
        recent = health["recent_anomaly_counts"]
        assert recent["FLOW_BINDING_CONFLICT"] == 2 and sum(recent.values()) < sum(health["anomaly_counts"].values())

    # A restart reads the acknowledgement back: the storm before it stays acknowledged.
    with CtxplaneProcess(config), Client(f"unix:{tmp_path / 'q.sock'}") as client:
        health = _health(client)
        assert health["acknowledged"]["by"] == "alice"
        assert health["state"] == "AMBER" and health["recent_anomaly_counts"] == recent


def test_ack_needs_a_reason_and_a_running_process(tmp_path: Path) -> None:
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'store.sqlite'}")
    missing = ctxplane("ack", "--config", str(config))
    assert missing.returncode == 2 and "--reason" in missing.stderr
    nobody = ctxplane("ack", "--config", str(config), "--reason", "x")
    assert nobody.returncode == 1 and nobody.stderr.startswith("ctxplane: ")
    with CtxplaneProcess(config), Client(f"unix:{tmp_path / 'q.sock'}") as client:
        answer = client.request({"op": "health_ack", "by": "alice", "reason": "  "})
        assert (answer["status"], answer["code"]) == ("ERROR", "INVALID_REQUEST") and "reason" in answer["detail"]
    assert not (tmp_path / "artifacts" / "any-run" / "health_acks.jsonl").exists()


def test_ledger_rows_older_than_the_window_no_longer_count(tmp_path: Path) -> None:
    db = tmp_path / "store.sqlite"
    config = write_config(tmp_path, f"sqlite:///{db}")
    _storm(tmp_path / "eb", _now_offset_s())
    assert ctxplane("run", "--config", str(config), "--once").returncode == 0
    # Within the window, a restart still sees the storm (it happened minutes ago, not "ever").
    with CtxplaneProcess(config), Client(f"unix:{tmp_path / 'q.sock'}") as client:
        health = _health(client)
        assert health["state"] == "RED" and "BINDING_CONFLICTS_RED" in health["reasons"]
        assert health["policy"]["window_s"] == 900
    # The same rows, recorded an hour ago (the window is 15 minutes): the cause is gone, GREEN.
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE apply_failures SET recorded_at_utc = ?", (_hours_ago(1),))
    conn.close()
    with CtxplaneProcess(config), Client(f"unix:{tmp_path / 'q.sock'}") as client:
        health = _health(client)
        assert (health["state"], health["reasons"]) == ("GREEN", [])
        assert health["anomaly_counts"]["FLOW_BINDING_CONFLICT"] == 2 * STORM and health["recent_anomaly_counts"] == {}
    # A shorter policy window through the environment: the same rules, over 60 s.
    env = {"CTXPLANE_HEALTH_WINDOW_S": "60"}
    with CtxplaneProcess(config, env=env), Client(f"unix:{tmp_path / 'q.sock'}") as client:
        assert _health(client)["policy"]["window_s"] == 60


def _hours_ago(hours: float) -> str:
    from ctxplane.contracts.timestamps import format_ts_us

    return format_ts_us(parse_ts_us(now_utc()) - int(hours * 3600 * 1_000_000))


def test_status_check_exits_by_the_state_for_probes_and_scripts(tmp_path: Path) -> None:
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'store.sqlite'}")
    nobody = ctxplane("status", "--config", str(config), "--check")
    assert nobody.returncode == 1  # no process answered: not 0 either
    _storm(tmp_path / "eb", _now_offset_s())
    with CtxplaneProcess(config), Client(f"unix:{tmp_path / 'q.sock'}") as client:
        _caught_up(client)
        for extra in ((), ("--fail-on", "red"), ("--fail-on", "amber")):
            red = ctxplane("status", "--config", str(config), "--check", *extra)
            assert (red.returncode, red.stdout) == (4, "RED: APPLY_FAILURES_RED, BINDING_CONFLICTS_RED\n"), extra
        machine = ctxplane("status", "--config", str(config), "--check", "--json")
        assert machine.returncode == 4 and json.loads(machine.stdout)["health"]["state"] == "RED"
        assert ctxplane("status", "--config", str(config)).returncode == 0  # the table alone is not a check
        assert ctxplane("ack", "--config", str(config), "--reason", "seen").returncode == 0
        green = ctxplane("status", "--config", str(config), "--check")
        assert (green.returncode, green.stdout) == (0, "GREEN\n")
    # AMBER: exit 3, unless the probe only fails on RED.
    (tmp_path / "old").mkdir()
    old = write_config(tmp_path / "old", f"sqlite:///{tmp_path / 'old' / 'store.sqlite'}")
    publish(tmp_path / "old" / "eb", context_events(1), partitions=1)  # February event times: a replay advisory
    with CtxplaneProcess(old), Client(f"unix:{tmp_path / 'old' / 'q.sock'}") as client:
        assert client.request({"op": "resolve_flow_binding", "pins": PINS, "flow_id": "flow-1", "wait_ms": 20_000})["status"] == "READY"
        amber = ctxplane("status", "--config", str(old), "--check")
        assert (amber.returncode, amber.stdout) == (3, "AMBER: WATERMARK_REPLAY_ADVISORY\n")
        assert ctxplane("status", "--config", str(old), "--check", "--fail-on", "red").returncode == 0
    bad = ctxplane("status", "--config", str(old), "--check", "--fail-on", "green")
    assert bad.returncode == 2
