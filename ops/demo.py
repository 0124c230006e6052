"""`make demo`: publish a synthetic workload, run the supervisor, ask it questions, show the answers.

Everything lives under runs/demo/ (recreated each time); nothing is left running afterwards.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "runs" / "demo"
FLOWS = 50


def ctxplane(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ctxplane.actors.app.cli", *args], capture_output=True, text=True, check=False)


def section(title: str) -> None:
    print(f"\n== {title} " + "=" * max(0, 70 - len(title)))


def show_join(answer: dict[str, Any]) -> None:
    print(f"  {answer.get('flow_id')}: {answer['status']} {answer['reason_codes']}")
    if answer["status"] == "READY":
        frame = answer["join_frame"]
        key = answer["join_frame_key"]
        print(f"    frame {key['merchant_id']}/{key['arrival_seq']} roles={frame['roles_present']} complete={frame['context_complete']}")
        for ref in answer["evidence_refs"]:
            print(f"    evidence {ref['kind']}: {ref['ref']}")
        print(f"    basis_digest {answer['basis']['basis_digest'][:16]}… watermark {answer['basis']['watermark_ts_utc']}")
    elif answer["status"] == "CONFLICT" and "conflict" in answer:
        print(f"    conflict: {answer['conflict']}")


def show_features(answer: dict[str, Any]) -> None:
    if answer.get("status") != "OK":
        print(f"  ERROR {answer.get('code')}: {answer.get('detail')}")
        return
    snap = answer["snapshot"]
    print(f"  as_of {snap['as_of_time_utc']}  freshness {snap['freshness']['state']} {snap['freshness']['flags']}")
    for group, keys in snap["features"].items():
        for key, windows in keys.items():
            for window, values in windows.items():
                print(f"    {group} {key} {window}: {values}")
    rev = snap["feature_def_policy_rev"]
    basis = snap["eb_offset_basis"]
    print(f"  policy {rev['policy_id']} {rev['revision']} digest {rev['content_digest'][:16]}…")
    print(f"  basis {basis['stream']} offsets={len(basis['offsets'])} digest {basis['basis_digest'][:16]}… window_end {basis['window_end_utc']}")
    print(f"  snapshot_hash {snap['snapshot_hash']}")


def main() -> int:
    from ctxplane.actors.operate.demo_workload import demo_expectations

    shutil.rmtree(DEMO, ignore_errors=True)
    DEMO.mkdir(parents=True)
    config = DEMO / "ctxplane.yaml"
    config.write_text(yaml.safe_dump({
        "store": {"dsn": "sqlite:///ctxplane.sqlite"},
        "bus": {"root": "eb"},
        "query": {"listen": "unix:ctxplane.sock"},
        "metrics": {"listen": None},
        "health": {"artifact_root": "."},
        "logging": {"format": "json", "level": "info"},
    }))
    section(f"1. publish a synthetic workload ({FLOWS} flows) to the file bus")
    for line in ctxplane("demo", "--flows", str(FLOWS), "--root", str(DEMO / "eb")).stdout.splitlines():
        print("  " + line)

    section("2. run the supervisor (file bus + SQLite) and query it over its Unix socket")
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "ctxplane.actors.app.cli", "run", "--config", str(config)],
                            stderr=subprocess.PIPE, text=True)
    expect = demo_expectations(FLOWS)
    listen = f"unix:{DEMO / 'ctxplane.sock'}"
    try:
        client = _connect(listen, proc)
        with client:
            pins = expect.pins
            ask = lambda flow, wait=3000: client.request(  # noqa: E731
                {"op": "resolve_flow_binding", "pins": pins, "flow_id": flow, "request_id": flow, "wait_ms": wait})
            ready = ask(expect.ready[0])
            print(f"  first READY answer {time.monotonic() - started:.2f} s after start")
            section("3. join plane: is the context for flow X ready?")
            show_join(ready)
            for flow in (expect.missing_join_frame[0], expect.conflict[0], expect.missing_binding[0]):
                show_join(ask(flow, 0))
            statuses = [ask(flow)["status"] for flow in expect.ready]
            print(f"  {statuses.count('READY')}/{len(statuses)} expected-ready flows are READY")
            fraud_flow = expect.fraud[0]
            section(f"4. feature plane: features of {fraud_flow} and its instrument, with provenance")
            features = client.request({
                "op": "get_features", "pins": pins, "request_id": "demo-features", "wait_ms": 3000,
                "as_of_time_utc": "2026-02-07T05:00:50.000000Z", "deadline_ms": 5000,
                "feature_keys": [{"key_type": "flow_id", "key_id": fraud_flow}, {"key_type": "instrument_id", "key_id": "inst-5"}],
                "feature_groups": [{"name": "core_features", "version": "v1"}, {"name": "entity_velocity", "version": "v1"}],
            })
            show_features(features)
            section("5. ctxplane status (health, lag and watermark per partition)")
            from ctxplane.actors.app.status_view import render_status

            print(render_status(client.request({"op": "health"})))
    finally:
        proc.terminate()
        code = proc.wait(30)
    section("6. stopped cleanly on SIGTERM" if code == 0 else f"6. supervisor exited with {code}")
    print(f"  state digest  {ctxplane('digest', '--config', str(config)).stdout.strip()}")
    print(f"  ledger digest {ctxplane('digest', '--config', str(config), '--ledger').stdout.strip()}")
    print(f"  (run `.venv/bin/ctxplane run --config {config.relative_to(ROOT)}` and "
          f"`.venv/bin/ctxplane status --config {config.relative_to(ROOT)}` to explore)")
    return 0 if code == 0 else 1


def _connect(listen: str, proc: subprocess.Popen[str]) -> Any:
    """Connect once the supervisor logs that it is running; keep draining its log meanwhile."""
    import threading

    from ctxplane.runtime.client import Client

    running = threading.Event()
    errors: list[str] = []

    def drain() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            if '"running"' in line:
                running.set()
            if '"error"' in line:
                errors.append(line.strip())
        running.set()

    threading.Thread(target=drain, daemon=True).start()
    running.wait(60)
    if proc.poll() is not None:
        raise SystemExit(f"the supervisor exited early with {proc.returncode}: {errors}")
    return Client(listen).connect()


if __name__ == "__main__":
    sys.exit(main())
