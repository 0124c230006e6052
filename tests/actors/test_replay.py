"""Replay manifests, replay windows, checkpoint rewinds and apply atomicity, in process (both backends)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from ctxplane.actors.ingest.apply import apply_program
from ctxplane.actors.operate.checkpoint_rewind import rewind_checkpoint
from ctxplane.actors.operate.digest import state_digest_program
from ctxplane.actors.operate.replay import replay
from ctxplane.actors.operate.replay_manifest import (
    ReplayManifest,
    load_manifest,
    manifest_for_checkpoints,
    replay_id,
)
from ctxplane.config.settings import Settings, load_settings
from ctxplane.runtime.bus import FileBus, partition_key_for
from ctxplane.runtime.exceptions import UsageError
from ctxplane.runtime.store import ExecMany, Fetch, Op, Program, open_store
from tests.support.apply import batch
from tests.support.process import write_config
from tests.support.workload import ARRIVAL, PINS, append_raw, context_events

# -- manifests -----------------------------------------------------------------------------------


def _manifest_file(tmp_path: Path, text: str, name: str = "m.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("topics: [{topic: t, partitions: [{partition: 0}]}]",
         "topics.0.partitions.0: partition 0 has neither from_offset nor to_offset"),
        ("topics: [{topic: t, partitions: [{partition: 0, from_offset: 5, to_offset: 4}]}]",
         "from_offset 5 is after to_offset 4"),
        ("topics: [{topic: t, partitions: [{partition: 0, to_offset: 4, extra: 1}]}]",
         "topics.0.partitions.0.extra: unknown key"),
        ("topics: [{topic: t, partitions: [{partition: 0, to_offset: 4}]}]\nwindow: 3", "window: unknown key"),
        ("topics: [{topic: t, partitions: [{partition: 0, to_offset: true}]}]", "not a boolean"),
        ("topics: [{topic: t, partitions: [{partition: 0, to_offset: -1}]}]", "greater than or equal to 0"),
        ("topics: [{topic: t, partitions: [{partition: 0, to_offset: 1}, {partition: 0, from_offset: 2}]}]",
         "t partition 0 is listed twice"),
        ("topics: []", "topics: List should have at least 1 item"),
        ("pins: {platform_run_id: x}", "topics: Field required"),
        ("topics: [{topic: t, partitions: [{partition: 0, to_offset: 1}]}]\npins: {colour: red}",
         "pins.colour: unknown key"),
        ("[1, 2]", "a replay manifest is a mapping"),
        ("topics: [unclosed", "invalid YAML/JSON"),
    ],
)
def test_invalid_manifests_are_one_line_usage_errors(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(UsageError) as caught:
        load_manifest(_manifest_file(tmp_path, text))
    assert fragment in str(caught.value)
    assert "\n" not in str(caught.value)


def test_missing_manifest_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read replay manifest"):
        load_manifest(tmp_path / "absent.yaml")


def test_yaml_and_json_manifests_are_the_same_manifest_with_the_same_replay_id(tmp_path: Path) -> None:
    yaml_path = _manifest_file(tmp_path, (
        "topics:\n  - topic: t\n    partitions:\n      - {partition: 1, from_offset: '3', to_offset: 9}\n"
        "pins: {seed: 42, platform_run_id: null}\n"
    ))
    data = {"pins": {"seed": 42}, "topics": [{"topic": "t", "partitions": [{"to_offset": 9, "partition": 1, "from_offset": 3}]}]}
    json_path = _manifest_file(tmp_path, orjson.dumps(data).decode(), "m.json")
    from_yaml, from_json = load_manifest(yaml_path), load_manifest(json_path)
    assert from_yaml == from_json
    assert replay_id(from_yaml) == replay_id(from_json)
    assert len(replay_id(from_yaml)) == 32
    assert from_yaml.pin_values() == {"seed": 42}
    other = ReplayManifest.model_validate({**data, "pins": {"seed": 43}})
    assert replay_id(other) != replay_id(from_yaml)


# -- replay windows (in process) -----------------------------------------------------------------


def _settings(tmp_path: Path, dsn: str, **sections: dict[str, Any]) -> Settings:
    return load_settings(write_config(tmp_path, dsn, features={"enabled": False}, **sections))


async def publish(root: Path, items: list[tuple[str, dict[str, Any]]], *, partitions: int) -> None:
    """``tests.support.workload.publish`` for async tests (that one runs its own event loop)."""
    async with FileBus(root) as bus:
        for topic, env in items:
            await bus.publish(topic, partition_key_for(env, None), env, partitions=partitions)


async def _rows(settings: Settings, sql: str) -> list[tuple[Any, ...]]:
    def program() -> Program[list[tuple[Any, ...]]]:
        rows = yield Fetch(sql)
        return [tuple(row) for row in rows]

    async with await open_store(settings.store) as store:
        return await store.read(program())


async def _checkpoint(settings: Settings, topic: str) -> tuple[str, str | None] | None:
    rows = await _rows(settings, f"SELECT next_offset, watermark_ts_utc FROM checkpoints WHERE topic = '{topic}'")
    return (rows[0][0], rows[0][1]) if rows else None


def _arrival_window(start: int | None = None, stop: int | None = None, **extra: Any) -> ReplayManifest:
    part: dict[str, Any] = {"partition": 0}
    if start is not None:
        part["from_offset"] = start
    if stop is not None:
        part["to_offset"] = stop
    return ReplayManifest.model_validate({"topics": [{"topic": ARRIVAL[0], "partitions": [part]}], **extra})


async def test_windows_are_inclusive_and_checkpoints_never_skip_a_gap(tmp_path: Path, store_dsn: str) -> None:
    settings = _settings(tmp_path, store_dsn)
    eb = tmp_path / "eb"
    await publish(eb, [item for seq in range(10) for item in context_events(seq) if item[0] == ARRIVAL[0]], partitions=1)

    # A window past offset 0 on a partition without a checkpoint: applied, but no checkpoint is
    # recorded, since the live consumer has not read offsets 0-1 yet.
    report = await replay(settings, _arrival_window(2, 5))
    assert (report.events, report.applied, report.duplicates, report.held) == (4, 4, 0, ((ARRIVAL[0], 0),))
    assert await _checkpoint(settings, ARRIVAL[0]) is None
    # Contiguous from 0: both ends inclusive; the re-read records are duplicates.
    report = await replay(settings, _arrival_window(0, 5))
    assert (report.events, report.applied, report.duplicates, report.held) == (6, 2, 4, ())
    checkpoint = await _checkpoint(settings, ARRIVAL[0])
    assert checkpoint is not None and checkpoint[0] == "6"
    # A window past the checkpoint (a gap at 6-7): the checkpoint stays as it was, watermark included.
    report = await replay(settings, _arrival_window(8, 9))
    assert (report.applied, report.held) == (2, ((ARRIVAL[0], 0),))
    assert await _checkpoint(settings, ARRIVAL[0]) == checkpoint
    # No to_offset: up to the end as it was when the replay started.
    report = await replay(settings, _arrival_window(3))
    assert (report.events, report.applied, report.duplicates) == (7, 2, 5)
    assert (await _checkpoint(settings, ARRIVAL[0]) or ("",))[0] == "10"
    # Blank lines count as offsets: a window over a blank line reads nothing and moves past it.
    append_raw(eb, ARRIVAL[0], 0, b"\n")
    await publish(eb, [context_events(10)[0]], partitions=1)
    report = await replay(settings, _arrival_window(10, 10))
    assert report.events == 0
    assert (await _checkpoint(settings, ARRIVAL[0]) or ("",))[0] == "11"
    report = await replay(settings, _arrival_window(11))
    assert (report.events, report.applied) == (1, 1)
    # A half-written last line is not part of any window until its newline arrives.
    append_raw(eb, ARRIVAL[0], 0, b'{"partition_key": "m-1", "payload": {"event_id"')
    report = await replay(settings, _arrival_window(12))
    assert (report.events, report.basis["join"]["topics"][ARRIVAL[0]]["0"]["next_offset"]) == (0, "12")
    # Everything applied exactly once, every replay recorded under its id with the basis it left.
    assert await _rows(settings, "SELECT count(*) FROM intake_dedupe") == [(11,)]
    assert await _rows(settings, "SELECT count(*) FROM apply_failures") == [(0,)]
    recorded = await _rows(settings, "SELECT replay_id, events, applied, duplicates, basis_json, basis_digest FROM replays")
    assert len(recorded) == 7
    last = [row for row in recorded if row[0] == report.replay_id][0]
    assert last[1:4] == (0, 0, 0)
    assert orjson.loads(last[4]) == report.basis
    assert report.basis["join"]["topics"][ARRIVAL[0]]["0"] == {"next_offset": "12", "offset_kind": "file_line"}
    assert last[5] == report.basis_digest


async def test_replay_pins_mismatch_becomes_ledger_rows_and_writes_no_frames(tmp_path: Path, store_dsn: str) -> None:
    settings = _settings(tmp_path, store_dsn)
    await publish(tmp_path / "eb", [item for seq in range(3) for item in context_events(seq)], partitions=1)
    manifest = _arrival_window(0, pins={"platform_run_id": PINS["platform_run_id"], "parameter_hash": "0" * 64})
    report = await replay(settings, manifest)
    assert (report.events, report.applied, report.rejected) == (3, 0, 3)
    rows = await _rows(settings, "SELECT reason_code, details_json FROM apply_failures")
    assert {reason for reason, _ in rows} == {"REPLAY_PINS_MISMATCH"}
    details = orjson.loads(rows[0][1])
    assert details["mismatches"] == {"parameter_hash": {"expected": "0" * 64, "actual": PINS["parameter_hash"]}}
    assert await _rows(settings, "SELECT count(*) FROM join_frame_roles") == [(0,)]
    # Matching pins (compared as strings: seed 42 == "42") apply normally.
    report = await replay(settings, _arrival_window(0, pins={"seed": "42", "scenario_id": "scenario-1"}))
    assert report.applied == 3


async def test_topic_outside_every_plane_and_unknown_partition_are_refused(tmp_path: Path, sqlite_dsn: str) -> None:
    settings = _settings(tmp_path, sqlite_dsn)
    await publish(tmp_path / "eb", context_events(1), partitions=1)
    traffic = ReplayManifest.model_validate({"topics": [{"topic": "fp.bus.traffic.fraud.v1", "partitions": [{"partition": 0, "to_offset": 1}]}]})
    with pytest.raises(UsageError, match=r"^REPLAY_TOPIC_NOT_ALLOWED: fp.bus.traffic.fraud.v1$"):
        await replay(settings, traffic)  # the feature plane is disabled in this config
    missing = ReplayManifest.model_validate({"topics": [{"topic": ARRIVAL[0], "partitions": [{"partition": 3, "to_offset": 1}]}]})
    with pytest.raises(UsageError, match=r"has no partition 3 on the bus \(partitions: 0\)"):
        await replay(settings, missing)


async def test_rebuild_manifest_and_rewind(tmp_path: Path, store_dsn: str) -> None:
    settings = _settings(tmp_path, store_dsn)
    await publish(tmp_path / "eb", [item for seq in range(5) for item in context_events(seq)], partitions=1)
    with pytest.raises(UsageError, match="no checkpoint past offset 0"):
        await manifest_for_checkpoints(settings)
    await replay(settings, _arrival_window(0, 3))
    assert await manifest_for_checkpoints(settings) == {
        "topics": [{"topic": ARRIVAL[0], "partitions": [{"partition": 0, "from_offset": 0, "to_offset": 3}]}]
    }
    with pytest.raises(UsageError, match="a rewind only moves a checkpoint backward"):
        await rewind_checkpoint(settings, ARRIVAL[0], 0, to_offset=5)
    with pytest.raises(UsageError, match="by 9: its checkpoint is at 4"):
        await rewind_checkpoint(settings, ARRIVAL[0], 0, by=9)
    with pytest.raises(UsageError, match="no checkpoint for fp.bus.context.arrival_entities.v1 partition 0"):
        await rewind_checkpoint(settings, "fp.bus.context.arrival_entities.v1", 0, by=1)
    with pytest.raises(UsageError, match="not consumed by any enabled plane"):
        await rewind_checkpoint(settings, "fp.bus.traffic.fraud.v1", 0, by=1)
    report = await rewind_checkpoint(settings, ARRIVAL[0], 0, by=3)
    assert (report.from_offset, report.to_offset) == ("4", "1")
    assert (await _checkpoint(settings, ARRIVAL[0]) or ("",))[0] == "1"
    audit = await _rows(settings, "SELECT scope, topic, partition_id, from_offset, to_offset FROM checkpoint_rewinds")
    assert audit == [("*", ARRIVAL[0], 0, "4", "1")]


# -- atomicity: effects and checkpoint commit together or not at all ---------------------------------


class Boom(Exception):
    """Raised by the test in the middle of an apply transaction."""


def _failing(program: Program[Any], *, before_checkpoint: bool) -> Program[Any]:
    """Forward ``program``'s operations, then fail: either just before the checkpoint upsert (all
    effects already executed) or after the whole program (effects and checkpoint executed)."""
    op: Op = next(program)
    while True:
        if before_checkpoint and isinstance(op, ExecMany) and op.sql.startswith("INSERT INTO checkpoints"):
            raise Boom("after the effects, before the checkpoint")
        result = yield op
        try:
            op = program.send(result)
        except StopIteration:
            raise Boom("after the effects and the checkpoint") from None


def _counts() -> Program[dict[str, int]]:
    out = {}
    for table in ("intake_dedupe", "join_frame_roles", "flow_binding_claims", "context_pins", "checkpoints",
                  "intake_counters"):
        rows = yield Fetch(f"SELECT count(*) FROM {table}")
        out[table] = rows[0][0]
    return out


@pytest.mark.parametrize("before_checkpoint", [True, False], ids=["before-checkpoint", "after-checkpoint"])
async def test_an_exception_inside_apply_leaves_neither_effects_nor_checkpoint(
    tmp_path: Path, store_dsn: str, before_checkpoint: bool
) -> None:
    settings = _settings(tmp_path, store_dsn)
    batches = [batch(topic, 0, 0, [env]) for topic, env in context_events(1)]
    async with await open_store(settings.store) as store:
        await store.migrate()
        empty = await store.read(state_digest_program())
        with pytest.raises(Boom):
            await store.write(_failing(apply_program(batches, recorded_at="2026-01-01T00:00:00.000000Z"),
                                       before_checkpoint=before_checkpoint))
        assert set((await store.read(_counts())).values()) == {0}
        assert await store.read(state_digest_program()) == empty
        # The store is not left broken: the same batches then apply normally.
        await store.write(apply_program(batches, recorded_at="2026-01-01T00:00:00.000000Z"))
        counts = await store.read(_counts())
        assert counts["intake_dedupe"] == 3 and counts["checkpoints"] == 3
