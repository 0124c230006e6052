"""The file bus (docs/events.md §The file bus) and the ``ctxplane bus`` sub-commands built on it."""

from __future__ import annotations

import argparse
import io
import os
import re
import sys
import tempfile
import types
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctxplane.actors.app.cli_bus import add_bus_parser
from ctxplane.runtime.bus import (
    FILE_LINE,
    BusRecord,
    EventBus,
    FileBus,
    ReadResult,
    partition_for,
)
from ctxplane.runtime.bus.file import DEFAULT_MAX_RECORD_BYTES
from ctxplane.runtime.exceptions import (
    BusClosed,
    BusError,
    BusPositionError,
    UsageError,
)

TOPIC = "fp.bus.test.v1"
TS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")
BIG = 1 << 30  # a max_bytes that never binds


def envelope(n: int, **payload: Any) -> dict[str, Any]:
    return {
        "event_id": f"{n:064x}",
        "event_type": "arrival_events_5B",
        "ts_utc": "2026-02-07T05:00:01.000000Z",
        "manifest_fingerprint": "a" * 64,
        "payload": {"merchant_id": f"m-{n}", "arrival_seq": n, **payload},
    }


def partition_file(root: Path, partition: int = 0, topic: str = TOPIC) -> Path:
    return root / topic / f"partition={partition}.jsonl"


def write_raw(root: Path, data: bytes, partition: int = 0, topic: str = TOPIC) -> None:
    path = partition_file(root, partition, topic)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as f:
        f.write(data)


async def read_all(
    bus: EventBus, partition: int = 0, position: str | None = "0", max_records: int = 1000
) -> ReadResult:
    """Read to the current end; returns every record and the final position."""
    records: list[BusRecord] = []
    while True:
        result = await bus.read(TOPIC, partition, position, max_records, BIG)
        records.extend(result.records)
        if result.next_position == position:
            return ReadResult(records, result.next_position)
        position = result.next_position


@pytest.fixture
async def bus(tmp_path: Path) -> AsyncIterator[FileBus]:
    async with FileBus(tmp_path) as file_bus:
        yield file_bus


# ---------------------------------------------------------------- offsets and positions


async def test_offsets_are_line_indexes_and_positions_exclusive_next(bus: FileBus) -> None:
    refs = [await bus.publish(TOPIC, f"k{n}", envelope(n)) for n in range(3)]
    assert [(r.partition, r.offset, r.offset_kind) for r in refs] == [
        (0, "0", FILE_LINE),
        (0, "1", FILE_LINE),
        (0, "2", FILE_LINE),
    ]
    first = await bus.read(TOPIC, 0, None, 10, BIG)
    assert [r.offset for r in first.records] == ["0", "1", "2"]
    assert first.next_position == "3"
    assert all(
        (r.topic, r.partition, r.offset_kind) == (TOPIC, 0, FILE_LINE) for r in first.records
    )
    line = orjson.loads(first.records[1].raw)
    assert set(line) == {"partition_key", "payload", "published_at_utc"}
    assert line["partition_key"] == "k1"
    assert line["payload"] == envelope(1)
    assert TS.match(line["published_at_utc"])
    assert line["published_at_utc"] == refs[1].published_at_utc

    resumed = await bus.read(TOPIC, 0, "1", 10, BIG)
    assert [r.offset for r in resumed.records] == ["1", "2"]
    at_end = await bus.read(TOPIC, 0, "3", 10, BIG)
    assert at_end == ReadResult([], "3")


async def test_raw_is_the_exact_line_without_newline(bus: FileBus, tmp_path: Path) -> None:
    await bus.publish(TOPIC, "k", envelope(1))
    on_disk = partition_file(tmp_path).read_bytes()
    (record,) = (await bus.read(TOPIC, 0, "0", 10, BIG)).records
    assert on_disk == record.raw + b"\n"
    assert b" " not in record.raw  # compact orjson


async def test_blank_lines_count_as_offsets_but_yield_no_record(
    bus: FileBus, tmp_path: Path
) -> None:
    write_raw(tmp_path, b"a\n\n   \nb\n\t\r\n\n")
    result = await bus.read(TOPIC, 0, "0", 10, BIG)
    assert [(r.offset, r.raw) for r in result.records] == [("0", b"a"), ("3", b"b")]
    assert result.next_position == "6"
    assert await bus.end_position(TOPIC, 0) == "6"
    # A batch of blank lines only still advances the position.
    assert await bus.read(TOPIC, 0, "1", 10, BIG) == ReadResult(
        [BusRecord(TOPIC, 0, "3", FILE_LINE, b"b")], "6"
    )
    assert await bus.read(TOPIC, 0, "4", 10, BIG) == ReadResult([], "6")


async def test_half_written_last_line_waits_for_its_newline(bus: FileBus, tmp_path: Path) -> None:
    write_raw(tmp_path, b'{"a":1}\n{"b":')
    first = await bus.read(TOPIC, 0, "0", 10, BIG)
    assert [(r.offset, r.raw) for r in first.records] == [("0", b'{"a":1}')]
    assert first.next_position == "1"
    assert await bus.end_position(TOPIC, 0) == "1"
    # Polling again (twice: the second poll takes the "file did not grow" shortcut) reads nothing.
    assert await bus.read(TOPIC, 0, "1", 10, BIG) == ReadResult([], "1")
    assert await bus.read(TOPIC, 0, "1", 10, BIG) == ReadResult([], "1")
    write_raw(tmp_path, b"2")  # grown, still incomplete
    assert await bus.read(TOPIC, 0, "1", 10, BIG) == ReadResult([], "1")
    write_raw(tmp_path, b"}\n")
    second = await bus.read(TOPIC, 0, "1", 10, BIG)
    assert [(r.offset, r.raw) for r in second.records] == [("1", b'{"b":2}')]
    assert second.next_position == "2"
    assert await bus.end_position(TOPIC, 0) == "2"


async def test_half_written_line_after_a_fresh_open(tmp_path: Path) -> None:
    write_raw(tmp_path, b"x" * 300_000)  # longer than one read chunk, no newline yet
    async with FileBus(tmp_path) as bus:
        assert await bus.read(TOPIC, 0, None, 10, BIG) == ReadResult([], "0")
        write_raw(tmp_path, b"\n")
        (record,) = (await bus.read(TOPIC, 0, None, 10, BIG)).records
        assert record.raw == b"x" * 300_000


async def test_junk_lines_are_yielded_as_raw_records(bus: FileBus, tmp_path: Path) -> None:
    huge = b'{"blob":"' + b"x" * (10 * 1024 * 1024) + b'"}'
    lines = [
        b"not json at all",
        b"\xff\xfe\x00 not utf-8 \xc3\x28",
        b"[1, 2, 3]",
        b'{"unterminated": ',
        huge,
        b"null",
        b'"a string"',
    ]
    write_raw(tmp_path, b"\n".join(lines) + b"\n")
    batches = []
    position = "0"
    while True:
        result = await bus.read(TOPIC, 0, position, 100, 1024 * 1024)
        if result.next_position == position:
            break
        batches.append(result.records)
        position = result.next_position
    # The 10 MB line is past the record limit (1 MiB): it is handed out cut to the limit, with its
    # full size, so that intake ledgers it without the bus ever holding it whole.
    cut = [line if len(line) <= DEFAULT_MAX_RECORD_BYTES else line[:DEFAULT_MAX_RECORD_BYTES] for line in lines]
    assert [r.raw for batch in batches for r in batch] == cut
    assert [r.full_size for batch in batches for r in batch] == [None] * 4 + [len(huge)] + [None] * 2
    assert [r.offset for batch in batches for r in batch] == [str(i) for i in range(len(lines))]
    # The 10 MB line exceeds max_bytes: it goes out alone, it is never skipped or an error.
    assert [len(batch) for batch in batches] == [4, 1, 2]
    assert position == str(len(lines))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    limit=st.integers(1, 40),
    lines=st.lists(st.binary(max_size=120).map(lambda b: b.replace(b"\n", b"x")), max_size=40),
    reads=st.lists(st.tuples(st.integers(1, 7), st.integers(1, 300)), min_size=1, max_size=40),
)
def test_lines_past_the_record_limit_are_cut_and_skipped_whole(
    limit: int, lines: list[bytes], reads: list[tuple[int, int]]
) -> None:
    """Every line is one record, in order, whatever the read bounds: a line within the limit as
    it is (blank ones none), a longer one cut to the limit with its full size (even a blank one)."""
    expected = [
        (str(i), line[:limit], len(line) if len(line) > limit else None)
        for i, line in enumerate(lines) if len(line) > limit or line.strip()
    ]

    async def run(root: Path) -> None:
        write_raw(root, b"".join(line + b"\n" for line in lines))
        async with FileBus(root, max_record_bytes=limit) as bus:
            got: list[tuple[str, bytes, int | None]] = []
            position = "0"
            for max_records, max_bytes in [*reads, (1000, BIG)]:
                result = await bus.read(TOPIC, 0, position, max_records, max_bytes)
                assert all(len(r.raw) <= limit for r in result.records)
                got.extend((r.offset, r.raw, r.full_size) for r in result.records)
                position = result.next_position
            assert got == expected
            assert position == str(len(lines))

    with tempfile.TemporaryDirectory() as tmp:
        anyio.run(run, Path(tmp))


async def test_a_huge_line_is_never_read_into_memory(tmp_path: Path) -> None:
    """One 64 MiB line between two records: the read allocates O(record limit), not O(line)."""
    import tracemalloc

    write_raw(tmp_path, b"before\n")
    path = partition_file(tmp_path)
    with path.open("ab") as f:
        for _ in range(64):
            f.write(b"x" * (1024 * 1024))
        f.write(b"\nafter\n")
    async with FileBus(tmp_path) as bus:
        tracemalloc.start()
        try:
            result = await bus.read(TOPIC, 0, "0", 100, BIG)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert [(r.offset, len(r.raw), r.full_size) for r in result.records] == [
        ("0", 6, None), ("1", DEFAULT_MAX_RECORD_BYTES, 64 * 1024 * 1024), ("2", 5, None)]
    assert result.next_position == "3"
    assert peak < 8 * 1024 * 1024, peak  # the old reader held the whole line, and copies of it


async def test_a_half_written_huge_line_waits_for_its_newline(tmp_path: Path) -> None:
    write_raw(tmp_path, b"a\n" + b"x" * 3000)
    async with FileBus(tmp_path, max_record_bytes=1000) as bus:
        first = await bus.read(TOPIC, 0, "0", 100, BIG)
        assert [r.raw for r in first.records] == [b"a"] and first.next_position == "1"
        assert (await bus.read(TOPIC, 0, "1", 100, BIG)) == ReadResult([], "1")
        write_raw(tmp_path, b"x" * 3000 + b"\nb\n")
        rest = await bus.read(TOPIC, 0, "1", 100, BIG)
    assert [(r.raw, r.full_size) for r in rest.records] == [(b"x" * 1000, 6000), (b"b", None)]
    assert rest.next_position == "3"


def test_a_non_positive_record_limit_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_record_bytes"):
        FileBus(tmp_path, max_record_bytes=0)


async def test_origin_wrapper_formats_come_through_untouched(bus: FileBus, tmp_path: Path) -> None:
    env = envelope(5)
    lines = [
        orjson.dumps(
            {
                "partition_key": "m-5",
                "payload": env,
                "published_at_utc": "2026-02-07T05:00:01.000000Z",
            }
        ),
        orjson.dumps(
            {
                "partition_key": "m-5",
                "envelope": env,
                "published_at_utc": "2026-02-07T05:00:01.000000Z",
            }
        ),
        orjson.dumps(env),
    ]
    write_raw(tmp_path, b"\n".join(lines) + b"\n")
    result = await bus.read(TOPIC, 0, None, 10, BIG)
    assert [r.raw for r in result.records] == lines
    decoded = [orjson.loads(r.raw) for r in result.records]
    # (decoding is intake's job; this only shows the bytes carry the three origin forms)
    unwrapped = [
        d.get("payload", d.get("envelope")) if "partition_key" in d else d for d in decoded
    ]
    assert unwrapped == [env, env, env]


# ---------------------------------------------------------------- batch bounds


async def test_max_records_bounds_a_batch(bus: FileBus) -> None:
    await bus.publish_many(TOPIC, [("k", envelope(n)) for n in range(10)])
    result = await bus.read(TOPIC, 0, "0", 3, BIG)
    assert [r.offset for r in result.records] == ["0", "1", "2"]
    assert result.next_position == "3"


async def test_max_bytes_bounds_a_batch_but_allows_one_record(bus: FileBus, tmp_path: Path) -> None:
    write_raw(tmp_path, b"aaaa\nbbbb\ncccccccccc\nd\n")
    # 5 bytes per 4-byte line (with its newline): 10 bytes hold two.
    two = await bus.read(TOPIC, 0, "0", 100, 10)
    assert [r.raw for r in two.records] == [b"aaaa", b"bbbb"]
    # A record larger than max_bytes still goes out, alone.
    alone = await bus.read(TOPIC, 0, "2", 100, 3)
    assert [r.raw for r in alone.records] == [b"cccccccccc"]
    assert alone.next_position == "3"


@pytest.mark.parametrize(("max_records", "max_bytes"), [(0, 10), (10, 0), (-1, 10)])
async def test_non_positive_bounds_are_refused(
    bus: FileBus, max_records: int, max_bytes: int
) -> None:
    with pytest.raises(ValueError, match="must be >= 1"):
        await bus.read(TOPIC, 0, "0", max_records, max_bytes)


_line = st.one_of(
    st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")),
    st.sampled_from([b"", b"  ", b"\t", b'{"k":1}']),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lines=st.lists(_line, max_size=60),
    reads=st.lists(
        st.tuples(st.integers(1, 7), st.integers(1, 120), st.booleans()), min_size=1, max_size=80
    ),
)
def test_any_split_of_reads_yields_every_line_once_in_order(
    lines: list[bytes], reads: list[tuple[int, int, bool]]
) -> None:
    """Reads with arbitrary bounds, sometimes on a fresh adapter (no cursor), resume exactly."""
    expected = [(str(i), line) for i, line in enumerate(lines) if line.strip()]

    async def run(root: Path) -> None:
        write_raw(root, b"".join(line + b"\n" for line in lines))
        bus = FileBus(root)
        got: list[tuple[str, bytes]] = []
        position = "0"
        try:
            for max_records, max_bytes, fresh in reads:
                if fresh:
                    await bus.aclose()
                    bus = FileBus(root)
                result = await bus.read(TOPIC, 0, position, max_records, max_bytes)
                assert len(result.records) <= max_records
                assert (
                    len(result.records) <= 1 or sum(len(r.raw) for r in result.records) <= max_bytes
                )
                assert bus.compare_positions(result.next_position, position) >= 0
                got.extend((r.offset, r.raw) for r in result.records)
                position = result.next_position
            rest = await read_all(bus, position=position)
            got.extend((r.offset, r.raw) for r in rest.records)
            assert got == expected
            assert rest.next_position == str(len(lines))
        finally:
            await bus.aclose()

    with tempfile.TemporaryDirectory() as tmp:
        anyio.run(run, Path(tmp))


@settings(max_examples=40, deadline=None)
@given(
    lines=st.lists(_line, min_size=1, max_size=50), jumps=st.lists(st.integers(0, 55), max_size=10)
)
def test_reading_from_any_position_matches_the_file(lines: list[bytes], jumps: list[int]) -> None:
    async def run(root: Path) -> None:
        write_raw(root, b"".join(line + b"\n" for line in lines))
        async with FileBus(root) as bus:
            for jump in jumps:
                result = await bus.read(TOPIC, 0, str(jump), 1000, BIG)
                assert [(r.offset, r.raw) for r in result.records] == [
                    (str(i), line) for i, line in enumerate(lines) if i >= jump and line.strip()
                ]
                assert result.next_position == str(max(jump, len(lines)))

    with tempfile.TemporaryDirectory() as tmp:
        anyio.run(run, Path(tmp))


async def test_cursor_moves_across_scan_chunks(bus: FileBus, tmp_path: Path) -> None:
    """Jumps forward and back in a file larger than the 1 MiB newline-counting chunk."""
    lines = [b"%06d" % i + b"-" * (i % 50) for i in range(60_000)]
    write_raw(tmp_path, b"\n".join(lines) + b"\n")
    for position in (59_000, 10, 31_234, 31_235, 59_999, 0, 60_000, 70_000):
        result = await bus.read(TOPIC, 0, str(position), 2, BIG)
        assert [(r.offset, r.raw) for r in result.records] == [
            (str(i), lines[i]) for i in range(position, min(position + 2, len(lines)))
        ]
    assert await bus.end_position(TOPIC, 0) == "60000"


async def test_position_past_the_end_waits_for_the_file_to_grow(
    bus: FileBus, tmp_path: Path
) -> None:
    write_raw(tmp_path, b"a\nb\n")
    assert await bus.read(TOPIC, 0, "4", 10, BIG) == ReadResult([], "4")
    write_raw(tmp_path, b"c\nd\ne\n")
    result = await bus.read(TOPIC, 0, "4", 10, BIG)
    assert [(r.offset, r.raw) for r in result.records] == [("4", b"e")]


async def test_a_replaced_or_truncated_file_is_reread(bus: FileBus, tmp_path: Path) -> None:
    write_raw(tmp_path, b"a\nb\nc\n")
    assert (await read_all(bus)).next_position == "3"
    partition_file(tmp_path).write_bytes(b"x\n")  # truncated in place
    assert [r.raw for r in (await bus.read(TOPIC, 0, "0", 10, BIG)).records] == [b"x"]
    replacement = tmp_path / "new.jsonl"
    replacement.write_bytes(b"p\nq\nr\ns\n")
    os.replace(replacement, partition_file(tmp_path))
    result = await bus.read(TOPIC, 0, "1", 10, BIG)
    assert [r.raw for r in result.records] == [b"q", b"r", b"s"]


async def test_missing_partition_reads_empty(bus: FileBus) -> None:
    assert await bus.read("nope", 3, None, 10, BIG) == ReadResult([], "0")
    assert await bus.read("nope", 3, "7", 10, BIG) == ReadResult([], "7")
    assert await bus.end_position("nope", 3) == "0"
    assert await bus.list_partitions("nope") == []


async def test_latest_starts_at_the_current_end(tmp_path: Path) -> None:
    async with FileBus(tmp_path) as writer, FileBus(tmp_path, "latest") as reader:
        assert reader.start_position == "latest"
        assert await reader.read(TOPIC, 0, None, 10, BIG) == ReadResult([], "0")
        await writer.publish_many(TOPIC, [("k", envelope(n)) for n in range(3)])
        start = await reader.read(TOPIC, 0, None, 10, BIG)
        assert start == ReadResult([], "3")
        await writer.publish(TOPIC, "k", envelope(3))
        after = await reader.read(TOPIC, 0, start.next_position, 10, BIG)
        assert [r.offset for r in after.records] == ["3"]
        # An explicit position is honoured whatever the start position.
        assert len((await reader.read(TOPIC, 0, "0", 10, BIG)).records) == 4


def test_unknown_start_position_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="trim_horizon, latest"):
        FileBus(tmp_path, "earliest")


@pytest.mark.parametrize("position", ["-1", "abc", "", " 1", "1.0", "\u0661"])
async def test_malformed_positions_are_refused(bus: FileBus, position: str) -> None:
    with pytest.raises(BusPositionError, match="invalid file_line position"):
        await bus.read(TOPIC, 0, position, 10, BIG)
    with pytest.raises(BusPositionError):
        bus.compare_positions(position, "0")


def test_compare_positions_and_lag(tmp_path: Path) -> None:
    bus = FileBus(tmp_path)
    assert bus.offset_kind == FILE_LINE
    assert bus.compare_positions("9", "10") == -1  # numeric, not lexicographic
    assert bus.compare_positions("10", "10") == 0
    assert bus.compare_positions("11", "10") == 1
    assert bus.lag("7", "10") == 3
    assert bus.lag("12", "10") == 0


@pytest.mark.parametrize("topic", ["", ".", "..", "a/b", "../x", "a\\b", "a\x00b"])
async def test_topic_names_cannot_leave_the_root(bus: FileBus, topic: str) -> None:
    with pytest.raises(BusError, match="invalid topic name"):
        await bus.publish(topic, "k", envelope(1))
    with pytest.raises(BusError, match="invalid topic name"):
        await bus.list_partitions(topic)


# ---------------------------------------------------------------- topics and publishing


async def test_create_topic_makes_empty_partition_files(bus: FileBus, tmp_path: Path) -> None:
    await bus.create_topic(TOPIC, 3)
    assert await bus.list_partitions(TOPIC) == [0, 1, 2]
    assert all(partition_file(tmp_path, p).read_bytes() == b"" for p in range(3))
    head = orjson.loads((tmp_path / TOPIC / "head.json").read_bytes())
    assert head == {
        "next_offset": 0,
        "partitions": {"0": {"next_offset": 0}, "1": {"next_offset": 0}, "2": {"next_offset": 0}},
    }
    await bus.create_topic(TOPIC, 3)  # idempotent
    with pytest.raises(BusError, match=r"already exists .* 3 partition"):
        await bus.create_topic(TOPIC, 2)
    with pytest.raises(ValueError, match=">= 1"):
        await bus.create_topic("other", 0)


async def test_partition_count_is_the_number_of_partition_files(
    bus: FileBus, tmp_path: Path
) -> None:
    (tmp_path / TOPIC).mkdir()
    for name in (
        "partition=0.jsonl",
        "partition=1.jsonl",
        "partition=01.jsonl",
        "x.txt",
        "head.json",
    ):
        (tmp_path / TOPIC / name).touch()
    assert await bus.list_partitions(TOPIC) == [0, 1]


async def test_publish_creates_a_missing_topic(bus: FileBus) -> None:
    await bus.publish("t.default", "k", envelope(1))
    assert await bus.list_partitions("t.default") == [0]
    await bus.publish("t.four", "k", envelope(1), partitions=4)
    assert await bus.list_partitions("t.four") == [0, 1, 2, 3]
    # An existing topic keeps its partition count.
    await bus.publish("t.four", "k", envelope(2), partitions=2)
    assert await bus.list_partitions("t.four") == [0, 1, 2, 3]


async def test_publish_many_routes_fsyncs_once_per_file_and_updates_head(
    bus: FileBus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await bus.create_topic(TOPIC, 3)
    synced: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    keys = [f"m-{i % 5}" for i in range(40)]
    items = [(key, envelope(i)) for i, key in enumerate(keys)]
    refs = await bus.publish_many(TOPIC, items)
    touched = {partition_for(key, 3) for key in keys}
    assert len(synced) == len(touched)
    assert [r.partition for r in refs] == [partition_for(key, 3) for key in keys]

    for partition in range(3):
        records = (await read_all(bus, partition)).records
        mine = [
            (ref, item) for ref, item in zip(refs, items, strict=True) if ref.partition == partition
        ]
        assert [r.offset for r in records] == [ref.offset for ref, _ in mine]
        assert [orjson.loads(r.raw)["payload"] for r in records] == [env for _, (_, env) in mine]
        assert [orjson.loads(r.raw)["partition_key"] for r in records] == [
            key for _, (key, _) in mine
        ]

    head = orjson.loads((tmp_path / TOPIC / "head.json").read_bytes())
    for partition in range(3):
        assert head["partitions"][str(partition)]["next_offset"] == int(
            await bus.end_position(TOPIC, partition)
        )
    assert head["next_offset"] == head["partitions"]["0"]["next_offset"]
    assert not [p for p in (tmp_path / TOPIC).iterdir() if p.name.endswith(".tmp")]


async def test_one_publish_is_one_fsync(bus: FileBus, monkeypatch: pytest.MonkeyPatch) -> None:
    await bus.create_topic(TOPIC, 1)
    synced: list[int] = []
    monkeypatch.setattr(os, "fsync", synced.append)
    await bus.publish(TOPIC, "k", envelope(1))
    assert len(synced) == 1


async def test_unserialisable_envelope_writes_nothing(bus: FileBus) -> None:
    await bus.create_topic(TOPIC, 1)
    with pytest.raises(TypeError):
        await bus.publish_many(TOPIC, [("k", envelope(1)), ("k", {"bad": object()})])
    assert await bus.end_position(TOPIC, 0) == "0"


async def test_offsets_come_from_the_line_count_not_the_head(tmp_path: Path) -> None:
    """Origin tests: a deleted head recovers from the line count; a stale head of 7 with an empty
    log gives offset 0."""
    async with FileBus(tmp_path) as bus:
        await bus.create_topic(TOPIC, 1)
        (tmp_path / TOPIC / "head.json").write_bytes(b'{"next_offset": 7}')
        assert (await bus.publish(TOPIC, "k", envelope(0))).offset == "0"
        (tmp_path / TOPIC / "head.json").unlink()
        assert (await bus.publish(TOPIC, "k", envelope(1))).offset == "1"
        assert orjson.loads((tmp_path / TOPIC / "head.json").read_bytes())["next_offset"] == 2
    # Another adapter (another process) appends after lines it never saw itself.
    write_raw(tmp_path, b"\n\n")
    async with FileBus(tmp_path) as other:
        assert (await other.publish(TOPIC, "k", envelope(2))).offset == "4"


async def test_a_torn_last_line_is_terminated_before_appending(
    bus: FileBus, tmp_path: Path
) -> None:
    await bus.create_topic(TOPIC, 1)
    write_raw(tmp_path, b'{"crashed mid-wri')
    ref = await bus.publish(TOPIC, "k", envelope(1))
    assert ref.offset == "1"
    records = (await read_all(bus)).records
    assert [(r.offset, r.raw[:17]) for r in records] == [
        ("0", b'{"crashed mid-wri'),
        ("1", b'{"partition_key":'),
    ]


async def test_misnumbered_partition_files_refuse_publishing(bus: FileBus, tmp_path: Path) -> None:
    write_raw(tmp_path, b"", partition=0)
    write_raw(tmp_path, b"", partition=2)
    with pytest.raises(BusError, match=r"numbered 0\.\.1"):
        await bus.publish(TOPIC, "k", envelope(1))


async def test_closed_bus_refuses_work(tmp_path: Path) -> None:
    bus = FileBus(tmp_path)
    await bus.publish(TOPIC, "k", envelope(1))
    await bus.read(TOPIC, 0, None, 10, BIG)
    await bus.aclose()
    await bus.aclose()  # idempotent
    with pytest.raises(BusClosed):
        await bus.read(TOPIC, 0, None, 10, BIG)
    with pytest.raises(BusClosed):
        await bus.publish(TOPIC, "k", envelope(2))
    with pytest.raises(BusClosed):
        await bus.list_partitions(TOPIC)


async def test_concurrent_readers_of_one_partition(bus: FileBus) -> None:
    await bus.publish_many(TOPIC, [("k", envelope(n)) for n in range(500)])
    results: dict[int, list[str]] = {}

    async def reader(n: int) -> None:
        results[n] = [
            r.offset for r in (await read_all(bus, position=str(n * 100), max_records=7)).records
        ]

    async with anyio.create_task_group() as tg:
        for n in range(4):
            tg.start_soon(reader, n)
    assert results == {n: [str(i) for i in range(n * 100, 500)] for n in range(4)}


# ---------------------------------------------------------------- CLI: ctxplane bus ...


def cli() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ctxplane")
    add_bus_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def run_cli(*argv: str) -> int:
    args = cli().parse_args(list(argv))
    handler: Callable[[argparse.Namespace], int] = args.func
    return handler(args)


def jsonl(*objects: Any) -> bytes:
    return b"".join(orjson.dumps(o) + b"\n" for o in objects)


def test_cli_publish_then_tail(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "eb"
    source = tmp_path / "in.jsonl"
    envelopes = [envelope(n) for n in range(6)]
    source.write_bytes(
        jsonl(*envelopes[:3]) + b"\n" + jsonl(*envelopes[3:])
    )  # a blank line is skipped
    assert (
        run_cli(
            "bus",
            "publish",
            "--root",
            str(root),
            "--topic",
            TOPIC,
            "--partitions",
            "2",
            str(source),
        )
        == 0
    )
    assert capsys.readouterr().out == f"published 6 records to {TOPIC} (2 partitions)\n"

    assert run_cli("bus", "tail", "--root", str(root), "--topic", TOPIC, "--max", "0") == 0
    rows = [line.split(" ", 2) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 6
    seen = {}
    for partition, offset, raw in rows:
        line = orjson.loads(raw)
        assert int(partition) == partition_for(line["partition_key"], 2)
        assert line["partition_key"] == line["payload"]["payload"]["merchant_id"]
        seen[line["payload"]["event_id"]] = (int(partition), int(offset))
    assert set(seen) == {e["event_id"] for e in envelopes}

    assert (
        run_cli(
            "bus",
            "tail",
            "--root",
            str(root),
            "--topic",
            TOPIC,
            "--partition",
            "1",
            "--from-offset",
            "1",
            "--max",
            "1",
        )
        == 0
    )
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1
    assert out[0].startswith("1 1 {")


def test_cli_publish_from_stdin_with_key_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = jsonl(*(envelope(n, instrument_id=f"inst-{n % 2}") for n in range(4)))
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    assert (
        run_cli(
            "bus",
            "publish",
            "--root",
            str(tmp_path),
            "--topic",
            TOPIC,
            "--partitions",
            "4",
            "--key-field",
            "instrument_id",
        )
        == 0
    )
    assert capsys.readouterr().out == f"published 4 records to {TOPIC} (4 partitions)\n"
    keys = set()
    for partition in range(4):
        for line in partition_file(tmp_path, partition).read_bytes().splitlines():
            key = orjson.loads(line)["partition_key"]
            assert partition_for(key, 4) == partition
            keys.add(key)
    assert keys == {"inst-0", "inst-1"}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (jsonl(envelope(1)) + b"{not json\n", r"^line 2: not valid JSON"),
        (b"\n" + jsonl([1, 2]), r"^line 2: expected a JSON object .* got a JSON list"),
        (jsonl(envelope(1), {"payload": {}}), r"^line 2: no partition key"),
    ],
)
def test_cli_publish_bad_line_is_a_usage_error(
    tmp_path: Path, content: bytes, message: str
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(content)
    with pytest.raises(UsageError, match=message):
        run_cli("bus", "publish", "--root", str(tmp_path / "eb"), "--topic", TOPIC, str(source))
    assert not (tmp_path / "eb" / TOPIC).exists()  # nothing was published


def test_cli_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = str(tmp_path)
    with pytest.raises(UsageError, match=r"cannot read input file .*missing\.jsonl"):
        run_cli("bus", "publish", "--root", root, "--topic", TOPIC, str(tmp_path / "missing.jsonl"))
    with pytest.raises(UsageError, match=f"unknown topic {TOPIC}"):
        run_cli("bus", "tail", "--root", root, "--topic", TOPIC)
    assert run_cli("bus", "create", "--root", root, "--topic", TOPIC, "--partitions", "2") == 0
    assert "created with 2 partitions" in capsys.readouterr().out
    assert run_cli("bus", "create", "--root", root, "--topic", TOPIC, "--partitions", "2") == 0
    assert "already exists with 2 partitions" in capsys.readouterr().out
    with pytest.raises(UsageError, match=r"already exists .* cannot be re-created with 3"):
        run_cli("bus", "create", "--root", root, "--topic", TOPIC, "--partitions", "3")
    with pytest.raises(UsageError, match="has no partition 5"):
        run_cli("bus", "tail", "--root", root, "--topic", TOPIC, "--partition", "5")
    source = tmp_path / "in.jsonl"
    source.write_bytes(jsonl(envelope(1)))
    with pytest.raises(
        UsageError, match=r"already has 2 partitions .* --partitions 4 does not match"
    ):
        run_cli(
            "bus", "publish", "--root", root, "--topic", TOPIC, "--partitions", "4", str(source)
        )
    with pytest.raises(UsageError, match="invalid topic name"):
        run_cli("bus", "publish", "--root", root, "--topic", "../up", str(source))


@pytest.mark.parametrize(
    "argv",
    [
        ["bus", "publish", "--topic", TOPIC],  # neither --config nor --root
        ["bus", "publish", "--root", "r", "--config", "c", "--topic", TOPIC],
        ["bus", "create", "--root", "r", "--topic", TOPIC],  # --partitions is required
        ["bus", "create", "--root", "r", "--topic", TOPIC, "--partitions", "0"],
        ["bus", "tail", "--root", "r", "--topic", TOPIC, "--from-offset", "-1"],
        ["bus"],
    ],
)
def test_cli_argument_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli().parse_args(argv)
    assert exc.value.code == 2


def _fake_settings(monkeypatch: pytest.MonkeyPatch, kind: str, root: Path) -> list[str]:
    """Stand in for ctxplane.config.settings (the real loader is tested with the config)."""
    loaded: list[str] = []

    def load_settings(path: str) -> Any:
        loaded.append(path)
        bus = types.SimpleNamespace(kind=kind, root=root, start_position="trim_horizon")
        return types.SimpleNamespace(bus=bus, topics=lambda: {TOPIC: "join"})

    module = types.ModuleType("ctxplane.config.settings")
    module.load_settings = load_settings  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ctxplane.config.settings", module)
    return loaded


def test_cli_config_names_the_file_bus_root(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = _fake_settings(monkeypatch, "file", tmp_path / "from-config")
    source = tmp_path / "in.jsonl"
    source.write_bytes(jsonl(envelope(1), envelope(2)))
    assert run_cli("bus", "publish", "--config", "ctx.yaml", "--topic", TOPIC, str(source)) == 0
    assert loaded == ["ctx.yaml"]
    assert capsys.readouterr().out == f"published 2 records to {TOPIC} (1 partitions)\n"
    assert len(partition_file(tmp_path / "from-config").read_bytes().splitlines()) == 2


def test_cli_tail_refuses_a_kinesis_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # publish/create to Kinesis are tested against the emulator in tests/runtime/bus/test_kinesis.py.
    _fake_settings(monkeypatch, "kinesis", tmp_path)
    with pytest.raises(UsageError, match=r"^bus tail reads file buses only; the config names a Kinesis bus$"):
        run_cli("bus", "tail", "--config", "k.yaml", "--topic", TOPIC)
