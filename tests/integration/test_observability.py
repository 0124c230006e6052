"""Metrics over HTTP, health, status and the reconciliation artifact from a real `ctxplane run`."""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.request
from pathlib import Path

from ctxplane.runtime.client import Client
from tests.support.process import CtxplaneProcess, ctxplane, write_config
from tests.support.stores import fresh_dsn
from tests.support.workload import (
    ANCHOR_BASELINE,
    ARRIVAL,
    PINS,
    append_raw,
    context_events,
    envelope,
    publish,
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def _sum(samples: dict[str, float], pattern: str) -> float:
    rx = re.compile(pattern)
    return sum(v for k, v in samples.items() if rx.fullmatch(k))


def _series(name: str, **labels: str) -> str:
    """A sample's name as the exposition writes it (labels sorted)."""
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def _workload(eb: Path) -> None:
    items = [item for seq in range(1, 11) for item in context_events(seq)]
    dup = envelope(ANCHOR_BASELINE[1], {"merchant_id": "m-2", "arrival_seq": 1, "flow_id": "flow-1-dup"}, eid="d" * 64)
    publish(eb, [*items, (ANCHOR_BASELINE[0], dup)], partitions=1)
    append_raw(eb, ARRIVAL[0], 0, b"not json\n")


def test_metrics_health_status_and_artifact_after_a_known_workload(tmp_path: Path) -> None:
    port = _free_port()
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'store.sqlite'}", metrics={"listen": f"127.0.0.1:{port}"},
                          health={"artifact_root": str(tmp_path / "artifacts"), "artifact_interval_s": 0.2})
    _workload(tmp_path / "eb")
    with CtxplaneProcess(config), Client(f"unix:{tmp_path / 'q.sock'}") as client:
        ready = client.request({"op": "resolve_flow_binding", "pins": PINS, "flow_id": "flow-10", "wait_ms": 5000})
        assert ready["status"] == "READY"
        client.request({"op": "resolve_flow_binding", "pins": PINS, "flow_id": "no-such-flow"})
        # A forwarded op goes after the worker shipped the latencies of every earlier answer, so
        # once it is answered both resolves are counted on /metrics.
        client.request({"op": "health"})
        samples = _scrape(port)
        # 30 context events + 1 conflicting anchor applied; the junk line rejected.
        assert _sum(samples, r'ctxplane_events_total\{.*outcome="applied".*\}') == 31
        assert _sum(samples, r'ctxplane_events_total\{.*outcome="rejected".*\}') == 1
        assert _sum(samples, r'ctxplane_apply_failures_total\{.*reason="ENVELOPE_MISSING".*\}') == 1
        assert _sum(samples, r'ctxplane_apply_failures_total\{.*reason="FLOW_BINDING_CONFLICT".*\}') == 2
        assert samples["ctxplane_commits_total"] >= 1
        assert samples["ctxplane_commit_seconds_count"] == samples["ctxplane_commits_total"]
        assert samples['ctxplane_mailbox_capacity{actor="store-writer"}'] == 16
        assert _sum(samples, r'ctxplane_query_seconds_count\{op="resolve_flow_binding",status="READY"\}') == 1
        assert _sum(samples, r'ctxplane_query_seconds_count\{op="resolve_flow_binding",status="MISSING_BINDING"\}') == 1
        assert samples["ctxplane_store_available"] == 1
        health = client.request({"op": "health"})["health"]
        assert health["state"] == "AMBER"
        assert {"BINDING_CONFLICTS_AMBER", "APPLY_FAILURES_AMBER", "JOIN_MISSES_AMBER"} <= set(health["reasons"])
        assert "WATERMARK_REPLAY_ADVISORY" in health["reasons"]  # 2026-02 events replayed: advisory, not RED
        assert _sum(_scrape(port), r"ctxplane_checkpoint_lag_records\{.*\}") == 0
        table = ctxplane("status", "--config", str(config))
        assert table.returncode == 0 and table.stdout.startswith("health: AMBER")
        assert "fp.bus.context.arrival_events.v1" in table.stdout
        machine = json.loads(ctxplane("status", "--config", str(config), "--json").stdout)
        assert machine["health"]["state"] == "AMBER"
        artifact_path = tmp_path / "artifacts" / "any-run" / "reconciliation.json"
        for _ in range(20):  # the artifact is rewritten every 0.2 s: every read must be whole JSON
            if artifact_path.exists():
                json.loads(artifact_path.read_text())
    artifact = json.loads(artifact_path.read_text())
    assert set(artifact) >= {"generated_at_utc", "health", "metrics", "applied_basis", "unresolved_anomalies"}
    assert artifact["applied_basis"]["join"]["basis_digest"]
    reasons = [a["reason_code"] for a in artifact["unresolved_anomalies"]]
    assert sorted(reasons) == sorted(["ENVELOPE_MISSING", "FLOW_BINDING_CONFLICT", "FLOW_BINDING_CONFLICT",
                                      "JOIN_FRAME_ROLE_CONFLICT", "JOIN_FRAME_ROLE_CONFLICT"])


def test_env_override_changes_the_health_verdict(tmp_path: Path) -> None:
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'store.sqlite'}")
    _workload(tmp_path / "eb")
    env = {"CTXPLANE_HEALTH_APPLY_FAILURES_HARD_RED": "1", "CTXPLANE_HEALTH_APPLY_FAILURES_HARD_AMBER": "1"}
    with CtxplaneProcess(config, env=env), Client(f"unix:{tmp_path / 'q.sock'}") as client:
        client.request({"op": "resolve_flow_binding", "pins": PINS, "flow_id": "flow-10", "wait_ms": 5000})
        health = client.request({"op": "health"})["health"]
        assert health["state"] == "RED" and "APPLY_FAILURES_RED" in health["reasons"]


def test_dsn_password_appears_nowhere(tmp_path: Path) -> None:
    import anyio

    dsn = anyio.run(fresh_dsn, "postgresql", tmp_path)
    secret = "s3cr3t-Pa55word"
    with_password = dsn.replace("postgres@", f"postgres:{secret}@", 1)
    assert secret in with_password
    port = _free_port()
    config = write_config(tmp_path, with_password, metrics={"listen": f"127.0.0.1:{port}"},
                          health={"artifact_root": str(tmp_path / "artifacts"), "artifact_interval_s": 0.2},
                          store={"auto_migrate": True}, logging={"format": "json", "level": "debug"})
    _workload(tmp_path / "eb")
    proc = CtxplaneProcess(config)
    with proc, Client(f"unix:{tmp_path / 'q.sock'}") as client:
        client.request({"op": "resolve_flow_binding", "pins": PINS, "flow_id": "flow-10", "wait_ms": 5000})
        metrics_text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        status = client.request({"op": "health"})
    assert secret not in metrics_text and secret not in json.dumps(status)
    assert secret not in "\n".join(proc.lines)
    for path in (tmp_path / "artifacts").rglob("*"):
        if path.is_file():
            assert secret not in path.read_text()
    # An unreachable database: the error line names the host, never the password.
    (tmp_path / "bad").mkdir()
    bad = write_config(tmp_path / "bad", f"postgresql://u:{secret}@127.0.0.1:1/db", store={"busy_timeout_s": 1})
    result = ctxplane("migrate", "--config", str(bad))
    assert result.returncode == 1 and secret not in result.stderr + result.stdout
    assert "127.0.0.1" in result.stderr


def test_known_counter_label_sets_are_exported_at_zero_from_start_up(tmp_path: Path) -> None:
    # Prometheus' increase() needs a sample before the first burst: a counter series that first
    # appears at 482 never fires CtxplaneHardApplyFailures (ops/prometheus/alerts_test.yml).
    port = _free_port()
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'store.sqlite'}", metrics={"listen": f"127.0.0.1:{port}"})
    publish(tmp_path / "eb", context_events(1), partitions=2)
    with CtxplaneProcess(config), Client(f"unix:{tmp_path / 'q.sock'}") as client:
        assert client.request({"op": "resolve_flow_binding", "pins": PINS, "flow_id": "flow-1", "wait_ms": 5000})["status"] == "READY"
        samples = _scrape(port)
        anchors = "fp.bus.context.flow_anchor.fraud.v1"
        assert samples[_series("ctxplane_apply_failures_total", plane="join", topic=anchors,
                               reason="FLOW_BINDING_CONFLICT", kind="hard")] == 0
        for partition in ("0", "1"):
            for outcome in ("duplicate", "rejected", "ignored"):
                name = _series("ctxplane_events_total", plane="join", topic=anchors, partition=partition, outcome=outcome)
                assert samples[name] == 0, name
        assert samples[_series("ctxplane_apply_failures_total", plane="join", topic=anchors,
                               reason="LATE_CONTEXT_EVENT", kind="annotation")] == 0
        # No label set that cannot happen: no feature-plane reason on a context topic.
        assert not any('reason="LATE_TRAFFIC_EVENT"' in k and anchors in k for k in samples)
        # The first conflict is an increase from the zero the series already had.
        dup = envelope(ANCHOR_BASELINE[1], {"merchant_id": "m-2", "arrival_seq": 1, "flow_id": "flow-1-dup"}, eid="d" * 64)
        publish(tmp_path / "eb", [(ANCHOR_BASELINE[0], dup)], partitions=2)
        deadline = time.monotonic() + 30
        while _sum(_scrape(port), r'ctxplane_apply_failures_total\{.*reason="FLOW_BINDING_CONFLICT".*\}') < 1:
            assert time.monotonic() < deadline, "the conflict was not counted"
            time.sleep(0.05)  # sync-ok: polling a condition with a deadline


def test_standard_collectors_build_info_restart_series_and_no_created_series(tmp_path: Path) -> None:
    port = _free_port()
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'store.sqlite'}", metrics={"listen": f"127.0.0.1:{port}"},
                          query={"workers": 2})
    publish(tmp_path / "eb", context_events(1), partitions=1)
    with CtxplaneProcess(config):
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    samples = {line.rpartition(" ")[0]: float(line.rpartition(" ")[2])
               for line in text.splitlines() if line and not line.startswith("#")}
    assert samples["process_resident_memory_bytes"] > 0 and samples["process_open_fds"] > 0
    assert any(k.startswith("python_info{") for k in samples) and any(k.startswith("python_gc_") for k in samples)
    from importlib.metadata import version

    build = [k for k in samples if k.startswith("ctxplane_build_info{")]
    assert build == [_series("ctxplane_build_info", version=version("ctxplane"), backend="sqlite", bus="file",
                             health_policy="ctxplane.observability.v0@r2", features_policy="ofp.features.v0@r1")]
    assert samples[build[0]] == 1
    assert not [k for k in samples if "_created" in k]
    # Every restart and escalation series the alerts use exists at zero from start-up.
    for supervisor, child in [("root", "store-writer"), ("root", "query"), ("root", "partitions"), ("root", "health"),
                              ("partitions", "discovery"), ("partitions", "partition:fp.bus.context.arrival_events.v1:0"),
                              ("query", "query-worker-0"), ("query", "query-worker-1")]:
        assert samples[_series("ctxplane_actor_restarts_total", supervisor=supervisor, child=child)] == 0, child
    assert samples[_series("ctxplane_supervisor_escalations_total", supervisor="root")] == 0
    assert samples[_series("ctxplane_supervisor_escalations_total", supervisor="partitions")] == 0


def _get(port: int, path: str) -> tuple[int, str]:
    import urllib.error

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_the_metrics_port_serves_metrics_liveness_and_readiness_and_nothing_else(tmp_path: Path) -> None:
    port = _free_port()
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'store.sqlite'}", metrics={"listen": f"127.0.0.1:{port}"})
    publish(tmp_path / "eb", context_events(1), partitions=2)
    with CtxplaneProcess(config), Client(f"unix:{tmp_path / 'q.sock'}") as client:
        client.request({"op": "health"})  # the health actor has refreshed at least once
        status, body = _get(port, "/metrics")
        assert status == 200 and "ctxplane_health_state" in body
        assert _get(port, "/healthz") == (200, "ok\n")
        deadline = time.monotonic() + 30
        while (ready := _get(port, "/readyz"))[0] != 200:  # the partition actors start after the query actor
            assert time.monotonic() < deadline, ready
            time.sleep(0.05)  # sync-ok: polling a condition with a deadline
        detail = json.loads(ready[1])
        assert detail["ready"] is True and detail["store_available"] is True and detail["reasons"] == []
        assert detail["partitions_assigned"] == 6  # three context topics with two partitions each
        for path in ("/", "/metricsx", "/ready", "/healthz/x"):
            assert _get(port, path)[0] == 404, path


def test_readyz_is_503_with_the_reason_while_no_partition_is_assigned(tmp_path: Path) -> None:
    port = _free_port()
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'store.sqlite'}", metrics={"listen": f"127.0.0.1:{port}"})
    (tmp_path / "eb").mkdir()  # no topic exists on the bus: nothing to read
    with CtxplaneProcess(config), Client(f"unix:{tmp_path / 'q.sock'}") as client:
        client.request({"op": "health"})
        status, body = _get(port, "/readyz")
        assert status == 503
        detail = json.loads(body)
        assert detail["ready"] is False and detail["reasons"] == ["NO_PARTITIONS_ASSIGNED"]
        assert _get(port, "/healthz")[0] == 200  # alive all the same: not a reason to restart it
