"""The failure drills (ops/RUNBOOK.md §2, docs/performance.md §Reliability), end to end: a real ``ctxplane run``, the real
``ctxplane drill`` CLI, real PostgreSQL (started by ``make test``) behind the real fault proxy.

Each test runs one drill and then checks, independently of the drill's own verdict, the invariant
every drill must keep: the final state digest and ledger digest equal those of a clean single pass
over the same bus (a fresh SQLite store, ``ctxplane run --once``); the intake counters equal the
clean pass's except for duplicates, and the extra duplicates are exactly the re-deliveries the
drill caused (the bus itself also re-delivers a few lines, which both stores count alike); and the
process is still the one that started. The DB-outage test also samples the supervisor's RSS from
/proc while the store is down and the producer keeps publishing: it must stay flat, because
bounded mailboxes push back to the bus reader instead of buffering.

CI runs short drills (seconds); ``-m slow`` runs longer ones by hand.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from ctxplane.actors.drills.faultproxy import control
from ctxplane.actors.operate.demo_workload import DEMO_TOPICS, write_demo_bus
from tests.support.drills import (
    RssSampler,
    clean_pass,
    digests,
    drill,
    failed_checks,
    fault_proxy,
    pg_port_from_env,
)
from tests.support.process import CtxplaneProcess, ctxplane, write_config
from tests.support.stores import fresh_dsn, query_rows
from tests.support.workload import append_raw

# Lines of partition 0 of every topic that the bus delivers a second time (a producer retry).
REDELIVERED = 10
# Small reads and group commits: what a supervisor holds in memory is small, so a flat RSS while
# the producer publishes far more than that during an outage shows the backpressure.
SMALL_BATCHES = {"batch_max_records": 200, "batch_max_bytes": 256 * 1024, "group_commit_max_records": 800,
                 "store_writer_mailbox": 8}


def _bus(eb: Path, flows: int) -> None:
    write_demo_bus(eb, flows, partitions=2)
    for topic in DEMO_TOPICS:
        head = b"".join((eb / topic / "partition=0.jsonl").read_bytes().splitlines(keepends=True)[:REDELIVERED])
        append_raw(eb, topic, 0, head)


def _deployment(directory: Path, dsn: str, *, flows: int = 200, **sections: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    eb = directory / "eb"
    _bus(eb, flows)
    return write_config(directory, dsn, bus={"root": str(eb)}, drills={"enabled": True}, **sections)


def _counters(dsn: str) -> dict[str, int]:
    return {name: int(n) for name, n in query_rows(dsn, "SELECT name, sum(value) FROM intake_counters GROUP BY name")}


def _dsn(config: Path) -> str:
    from ctxplane.config.settings import load_settings

    return load_settings(config).store.dsn


def _assert_clean_pass_invariant(config: Path, tmp_path: Path, *, drill_duplicates: int, eb: Path | None = None) -> None:
    """The check after every drill (docs/performance.md §Reliability): digests equal a clean single pass over the same
    bus, and the duplicate counter explains every re-delivery (the bus's own and the drill's)."""
    eb = eb or config.parent / "eb"
    clean = clean_pass(tmp_path / "clean", eb)
    assert digests(config) == digests(clean)
    drilled, reference = _counters(_dsn(config)), _counters(_dsn(clean))
    assert reference["duplicate"] == len(DEMO_TOPICS) * REDELIVERED  # the bus's own re-deliveries
    assert {k: v for k, v in drilled.items() if k != "duplicate"} == {k: v for k, v in reference.items() if k != "duplicate"}
    assert drilled.get("duplicate", 0) == reference["duplicate"] + drill_duplicates


def _assert_passed(code: int, report: dict[str, Any], stderr: str) -> None:
    assert report, f"no report (exit {code}):\n{stderr[-3000:]}"
    assert code == 0 and report["verdict"] == "PASS", (failed_checks(report), report["figures"], stderr[-2000:])


# -- db-outage -----------------------------------------------------------------------------------


@pytest.fixture
def pg_dsn(tmp_path: Path) -> str:
    return anyio.run(fresh_dsn, "postgresql", tmp_path)


def _via(dsn: str, port: int) -> str:
    head, _, tail = dsn.rpartition("@")
    host_port, _, database = tail.partition("/")
    return f"{head}@127.0.0.1:{port}/{database}"


def _outage_phase(proxy_control: str) -> Callable[[], str]:
    """"before", "outage" or "after", from the fault proxy's mode at the moment of asking."""
    faulted = False

    def phase() -> str:
        nonlocal faulted
        if control(proxy_control, "status")["mode"] != "pass":
            faulted = True
            return "outage"
        return "after" if faulted else "before"

    return phase


def _db_outage(tmp_path: Path, pg_dsn: str, *, seconds: str, events: str, fault: str, payload_bytes: str = "0",
               extra: tuple[str, ...] = ()) -> None:
    upstream = pg_port_from_env()
    assert upstream is not None
    with fault_proxy(upstream, tmp_path) as proxy:
        config = _deployment(tmp_path / "drilled", _via(pg_dsn, proxy.port), ingest=SMALL_BATCHES)
        with CtxplaneProcess(config) as proc:
            assert proc.proc is not None
            with RssSampler(proc.proc.pid, phase=_outage_phase(proxy.control)) as rss:
                code, report, stderr = drill(
                    "db-outage", config, "--seconds", seconds, "--events", events, "--fault", fault,
                    "--payload-bytes", payload_bytes, "--proxy-control", proxy.control, *extra,
                )
            _assert_passed(code, report, stderr)
            figures = report["figures"]
            assert figures["query_reasons"].get("STORE_UNAVAILABLE", 0) > 0
            assert "STORE_UNAVAILABLE" in figures["health_reasons"]
            assert figures["restarts"] == {} and figures["escalations"] == {}
            assert figures["applied"] == figures["events_sent"] == int(events) // 5 * 5
            # Memory bounded while the DB is down and the producer keeps publishing: what was
            # published during the outage (tens of megabytes) never entered the process.
            assert rss.samples.get("outage") and rss.samples.get("before"), rss.samples.keys()
            growth = rss.max_mb("outage") - rss.max_mb("before")
            assert growth < 16, f"RSS grew {growth:.1f} MB during the outage (to {rss.max_mb('outage'):.1f} MB)"
            assert proc.proc.poll() is None
        assert proc.proc.returncode == 0  # graceful stop after the drill
    # The same store, read directly now that the proxy is gone.
    (tmp_path / "direct").mkdir()
    direct = write_config(tmp_path / "direct", pg_dsn, bus={"root": str(config.parent / "eb")})
    _assert_clean_pass_invariant(direct, tmp_path, drill_duplicates=figures["duplicates"], eb=config.parent / "eb")


def test_db_outage_connections_cut_by_the_fault_proxy(tmp_path: Path, pg_dsn: str) -> None:
    # ~24 MB of events published while the store is down (several times that once parsed); a
    # supervisor holds at most its mailboxes' and in-flight windows' worth (a few MB here).
    _db_outage(tmp_path, pg_dsn, seconds="3", events="3000", fault="cut", payload_bytes="8000")


def test_db_outage_blackholed_store_still_answers_within_the_deadline(tmp_path: Path, pg_dsn: str) -> None:
    # The drill's own clean-pass comparison is left to this test's (the cut test runs both).
    _db_outage(tmp_path, pg_dsn, seconds="2", events="1000", fault="blackhole", extra=("--no-clean-pass",))


@pytest.mark.slow
def test_db_outage_soak(tmp_path: Path, pg_dsn: str) -> None:
    _db_outage(tmp_path, pg_dsn, seconds="30", events="60000", fault="cut", payload_bytes="4000")


@pytest.mark.slow
def test_db_outage_server_stopped_with_pg_ctl(tmp_path: Path, pg_dsn: str) -> None:
    """``pg_ctl stop -m immediate`` of the suite's own server (PGBIN/PGROOT from ops/pg_up.sh),
    restarted by the drill. By hand only: every other PostgreSQL test shares that server."""
    if not (os.environ.get("PGBIN") and os.environ.get("PGROOT")):
        pytest.skip("PGBIN/PGROOT not set (start PostgreSQL with ops/pg_up.sh)")
    config = _deployment(tmp_path / "drilled", pg_dsn, ingest=SMALL_BATCHES)
    with CtxplaneProcess(config):
        code, report, stderr = drill("db-outage", config, "--seconds", "5", "--events", "10000", "--method", "pg-ctl")
        _assert_passed(code, report, stderr)
    _assert_clean_pass_invariant(config, tmp_path, drill_duplicates=report["figures"]["duplicates"])


def test_db_outage_refuses_a_sqlite_store(tmp_path: Path) -> None:
    config = _deployment(tmp_path / "drilled", f"sqlite:///{tmp_path / 'drilled' / 'store.sqlite'}", flows=5)
    result = ctxplane("drill", "db-outage", "--config", str(config), "--seconds", "1")
    assert result.returncode == 2 and "needs a PostgreSQL store" in result.stderr


# -- the other drills (SQLite: the drills are about the process, not the backend) ----------------


@pytest.fixture
def sqlite_deployment(tmp_path: Path) -> Iterator[tuple[Path, CtxplaneProcess]]:
    config = _deployment(tmp_path / "drilled", f"sqlite:///{tmp_path / 'drilled' / 'store.sqlite'}")
    with CtxplaneProcess(config) as proc:
        yield config, proc
    assert proc.proc is not None and proc.proc.returncode == 0


def test_offset_rollback_changes_nothing_and_counts_every_redelivery(
    tmp_path: Path, sqlite_deployment: tuple[Path, CtxplaneProcess]
) -> None:
    config, proc = sqlite_deployment
    code, report, stderr = drill("offset-rollback", config, "--by", "15")
    _assert_passed(code, report, stderr)
    figures = report["figures"]
    assert figures["partitions_rewound"] == 2 * len(DEMO_TOPICS)
    assert figures["redelivered"] == figures["duplicates"] == 15 * 2 * len(DEMO_TOPICS)
    assert figures["digest_match"] and figures["applied"] == 0 and figures["rewinds_audited"] == 12
    # One partition, by the CLI's --topic/--partition.
    code, report, stderr = drill("offset-rollback", config, "--by", "7", "--topic", DEMO_TOPICS[0], "--partition", "1")
    _assert_passed(code, report, stderr)
    assert len(report["figures"]["rewound"]) == 1 and report["figures"]["rewound"][0].startswith(f"{DEMO_TOPICS[0]}:1 ")
    assert report["figures"]["duplicates"] == 7
    proc.stop()
    _assert_clean_pass_invariant(config, tmp_path, drill_duplicates=15 * 2 * len(DEMO_TOPICS) + 7)


def test_conflict_storm_is_recorded_answered_and_survived(
    tmp_path: Path, sqlite_deployment: tuple[Path, CtxplaneProcess]
) -> None:
    config, proc = sqlite_deployment
    code, report, stderr = drill("conflict-storm", config, "--count", "300")
    _assert_passed(code, report, stderr)
    figures = report["figures"]
    assert figures["conflicting_anchors"] == figures["anchors_recorded"] == 300
    assert figures["payload_mismatches"] == figures["mismatches_recorded"] == figures["payload_hash_mismatch_counted"] == 300
    # Both claims of each conflicting binding, both events of each conflicting frame role.
    assert figures["ledger_delta"] == {"FLOW_BINDING_CONFLICT": 600, "INTAKE_PAYLOAD_HASH_MISMATCH": 300,
                                       "JOIN_FRAME_ROLE_CONFLICT": 600}
    assert figures["conflict_answers"] == figures["answers_sampled"] > 0
    assert figures["restarts"] == {} and proc.proc is not None and proc.proc.poll() is None
    proc.stop()
    _assert_clean_pass_invariant(config, tmp_path, drill_duplicates=0)


def test_partition_faults_restart_one_for_one_then_escalate_past_the_intensity(
    tmp_path: Path, sqlite_deployment: tuple[Path, CtxplaneProcess]
) -> None:
    config, proc = sqlite_deployment
    target = ("--topic", DEMO_TOPICS[1], "--partition", "0")
    light = ("--events", "500", "--no-clean-pass")  # this test compares with a clean pass itself
    code, report, stderr = drill("actor-fault", config, "--target", "partition", "--times", "3", *target, *light)
    _assert_passed(code, report, stderr)
    assert report["figures"]["restarts"] == {f"partition:{DEMO_TOPICS[1]}:0": 3}
    assert report["figures"]["escalations"] == {} and not report["figures"]["intensity_exceeded"]
    duplicates = report["figures"]["duplicates"]
    # 11 faults back to back over 12 partition actors: more than 10 restarts in 10 s.
    code, report, stderr = drill("actor-fault", config, "--target", "partition", "--times", "11", *light)
    _assert_passed(code, report, stderr)
    figures = report["figures"]
    assert figures["intensity_exceeded"] and figures["escalations"] == {"partitions": 1}
    assert figures["root_restarts"] == {"partitions": 1, "health": 1, "drills": 1}
    duplicates += figures["duplicates"]
    assert proc.proc is not None and proc.proc.poll() is None  # the root absorbed the escalation
    proc.stop()
    _assert_clean_pass_invariant(config, tmp_path, drill_duplicates=duplicates)


def test_store_writer_faults_restart_the_rest_of_the_tree(
    tmp_path: Path, sqlite_deployment: tuple[Path, CtxplaneProcess]
) -> None:
    config, proc = sqlite_deployment
    code, report, stderr = drill("actor-fault", config, "--target", "store-writer", "--times", "2", "--events", "1000")
    _assert_passed(code, report, stderr)
    figures = report["figures"]
    assert figures["root_restarts"] == {n: 2 for n in ("store-writer", "checkpoint", "query", "partitions", "health", "drills")}
    assert figures["escalations"] == {}
    # A graceful restart does not wait for acks that the crashed store-writer can never send.
    assert figures["time_to_recover_s"] < 10
    # More faults than the root's intensity would stop the whole process: refused up front.
    result = ctxplane("drill", "actor-fault", "--config", str(config), "--target", "store-writer", "--times", "6")
    assert result.returncode == 2 and "would escalate and stop the whole process" in result.stderr
    proc.stop()
    _assert_clean_pass_invariant(config, tmp_path, drill_duplicates=figures["duplicates"])


def test_drills_are_refused_unless_enabled(tmp_path: Path) -> None:
    directory = tmp_path / "plain"
    directory.mkdir()
    _bus(directory / "eb", 5)
    config = write_config(directory, f"sqlite:///{directory / 'store.sqlite'}", bus={"root": str(directory / "eb")})
    with CtxplaneProcess(config):
        result = ctxplane("drill", "offset-rollback", "--config", str(config), "--by", "1")
        assert result.returncode == 2 and "drills.enabled" in result.stderr
        answer = ctxplane("query", "--config", str(config), '{"op": "drill", "action": "inject", "target": "store-writer"}')
        assert '"DRILLS_DISABLED"' in answer.stdout
        names = query_rows(f"sqlite:///{directory / 'store.sqlite'}", "SELECT count(*) FROM checkpoint_rewinds")
        assert names == [(0,)]
