"""The Kinesis adapter: the bus contract against the loopback emulator, and what the emulator cannot
show (throttling, expiring iterators, AWS's null NextShardIterator, pacing) against a fake client."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

from ctxplane.config.settings import BusSettings
from ctxplane.runtime.bus import (
    BusUnavailable,
    KinesisBus,
    ShardInfo,
    is_drained,
    kinesis_bus_from_settings,
)
from ctxplane.runtime.exceptions import BusError, BusPositionError, UsageError
from tests.support.kinesis import AWS_ENV, FakeKinesis, kinesis_endpoint
from tests.support.process import ctxplane

TOPIC = "fp.bus.context.arrival_events.v1"


def _bus(endpoint: str, **kw: Any) -> tuple[KinesisBus, str]:
    stream = f"t{uuid.uuid4().hex[:10]}"
    return KinesisBus(endpoint_url=endpoint, region="us-east-1", streams={TOPIC: stream}, **kw), stream


def _fake_bus(fake: FakeKinesis, **kw: Any) -> KinesisBus:
    return KinesisBus(streams={TOPIC: "s"}, client_factory=lambda: fake, region="us-east-1", **kw)


def _env(i: int) -> dict[str, Any]:
    return {"event_id": f"{i:064x}", "payload": {"merchant_id": f"m-{i}", "n": i}}


async def _drain(bus: KinesisBus, partition: int, position: str | None, max_records: int = 1000,
                 max_bytes: int = 1 << 20) -> tuple[list[Any], str | None]:
    records = []
    while True:
        result = await bus.read(TOPIC, partition, position, max_records, max_bytes)
        records += result.records
        if result.next_position == position and not result.records:
            return records, position
        position = result.next_position


# -- against the emulator ------------------------------------------------------------------------


@pytest.mark.kinesis
async def test_publish_read_round_trip_positions_and_resume() -> None:
    bus, stream = _bus(kinesis_endpoint())
    async with bus:
        await bus.create_topic(TOPIC, 2)
        assert await bus.list_partitions(TOPIC) == [0, 1]
        refs = await bus.publish_many(TOPIC, [(f"m-{i}", _env(i)) for i in range(40)])
        assert {r.offset_kind for r in refs} == {"kinesis_sequence"}
        seen: dict[str, bytes] = {}
        for partition in (0, 1):
            records, position = await _drain(bus, partition, None, max_records=7)
            assert [r.offset for r in records] == [r.offset for r in refs if r.partition == partition]
            assert all(r.partition == partition and r.topic == TOPIC for r in records)
            assert position == records[-1].offset  # exclusive-next: the last sequence processed
            assert await bus.end_position(TOPIC, partition) == position
            seen.update({r.offset + f"/{partition}": r.raw for r in records})
            # Resuming from the position (a fresh reader, as after a restart) finds only new records.
            async with KinesisBus(endpoint_url=kinesis_endpoint(), region="us-east-1", streams={TOPIC: stream}) as other:
                assert (await other.read(TOPIC, partition, position, 100, 1 << 20)).records == []
        assert sorted(orjson.loads(raw)["payload"]["n"] for raw in seen.values()) == list(range(40))  # Data = bare envelope
        # More records after the position come next, none skipped.
        more = await bus.publish_many(TOPIC, [(f"m-{i}", _env(i)) for i in range(40, 45)])
        p = more[0].partition
        tail, _ = await _drain(bus, p, refs[-1].offset if refs[-1].partition == p else
                               [r for r in refs if r.partition == p][-1].offset)
        assert [r.offset for r in tail] == [r.offset for r in more if r.partition == p]
        assert bus.lag("1", "2") is None
        assert bus.compare_positions("9", "10") == -1 and bus.compare_positions("10", "10") == 0


@pytest.mark.kinesis
async def test_max_records_and_max_bytes_split_an_answer_without_loss() -> None:
    bus, _ = _bus(kinesis_endpoint())
    async with bus:
        await bus.create_topic(TOPIC, 1)
        refs = await bus.publish_many(TOPIC, [("k", _env(i)) for i in range(25)])
        size = len(orjson.dumps(_env(0)))
        first = await bus.read(TOPIC, 0, None, 100, size * 3)  # bytes bound: 3 records
        assert [r.offset for r in first.records] == [r.offset for r in refs[:3]]
        second = await bus.read(TOPIC, 0, first.next_position, 4, 1 << 20)  # served from the cursor
        assert [r.offset for r in second.records] == [r.offset for r in refs[3:7]]
        one = await bus.read(TOPIC, 0, second.next_position, 100, 1)  # a record over max_bytes still comes, alone
        assert [r.offset for r in one.records] == [refs[7].offset]
        rest, _ = await _drain(bus, 0, one.next_position)
        assert [r.offset for r in rest] == [r.offset for r in refs[8:]]


@pytest.mark.kinesis
async def test_start_position_latest_skips_what_is_there_and_reads_what_comes() -> None:
    bus, _ = _bus(kinesis_endpoint(), start_position="latest")
    async with bus:
        await bus.create_topic(TOPIC, 1)
        await bus.publish_many(TOPIC, [("k", _env(i)) for i in range(5)])
        empty = await bus.read(TOPIC, 0, None, 100, 1 << 20)
        assert empty.records == [] and empty.next_position is None  # nothing consumed: no position yet
        new = await bus.publish_many(TOPIC, [("k", _env(i)) for i in range(5, 8)])
        got = await bus.read(TOPIC, 0, None, 100, 1 << 20)  # the cached LATEST iterator continues
        assert [r.offset for r in got.records] == [r.offset for r in new]


@pytest.mark.kinesis
async def test_unknown_topic_partition_and_topic_creation_rules() -> None:
    bus, stream = _bus(kinesis_endpoint())
    async with bus:
        assert await bus.list_partitions(TOPIC) == []
        assert (await bus.read(TOPIC, 3, None, 10, 100)).records == []
        await bus.create_topic(TOPIC, 3)
        await bus.create_topic(TOPIC, 3)  # idempotent
        with pytest.raises(BusError, match=f"{stream} already exists with 3 open shards, not 2"):
            await bus.create_topic(TOPIC, 2)
        assert (await bus.read(TOPIC, 7, None, 10, 100)).records == []
        with pytest.raises(BusPositionError):
            await bus.read(TOPIC, 0, "12a", 10, 100)
        with pytest.raises(ValueError):
            await bus.read(TOPIC, 0, None, 0, 100)
    with pytest.raises(BusError, match="invalid Kinesis stream name"):
        KinesisBus(streams={TOPIC: "bad name!"}).stream_of(TOPIC)


@pytest.mark.kinesis
async def test_a_refused_cached_iterator_is_replaced_from_the_same_position() -> None:
    bus, _ = _bus(kinesis_endpoint())
    async with bus:
        await bus.create_topic(TOPIC, 1)
        refs = await bus.publish_many(TOPIC, [("k", _env(i)) for i in range(6)])
        first = await bus.read(TOPIC, 0, None, 2, 1 << 20)
        cursor = bus._reader.cursors[(bus.stream_of(TOPIC), 0)]
        cursor.pending.clear()
        cursor.iterator = "bogus-iterator"  # moto answers a plain HTTP 500; AWS InvalidArgumentException
        rest, _ = await _drain(bus, 0, first.next_position)
        assert [r.offset for r in first.records + rest] == [r.offset for r in refs]


@pytest.mark.kinesis
async def test_split_shard_parent_drains_to_its_ending_and_children_name_it() -> None:
    bus, stream = _bus(kinesis_endpoint())
    async with bus:
        await bus.create_topic(TOPIC, 1)
        before = await bus.publish_many(TOPIC, [(f"m-{i}", _env(i)) for i in range(10)])
        client = await bus._calls.client()
        await client.split_shard(StreamName=stream, ShardToSplit="shardId-000000000000", NewStartingHashKey=str(2**127))
        after = await bus.publish_many(TOPIC, [(f"m-{i}", _env(i)) for i in range(10, 30)])
        shards = await bus.shards(TOPIC)
        assert shards[0].closed and shards[1].parents == (0,) and shards[2].parents == (0,)
        assert {r.partition for r in after} <= {1, 2}  # new records go to the open children only
        parent, position = await _drain(bus, 0, None)
        assert [r.offset for r in parent] == [r.offset for r in before]
        assert is_drained(shards[0], position)
        children = [r for p in (1, 2) for r in (await _drain(bus, p, None))[0]]
        assert len(children) == 20


@pytest.mark.kinesis
def test_cli_creates_and_publishes_to_kinesis_with_a_config(tmp_path: Path) -> None:
    endpoint = kinesis_endpoint()
    stream = f"t{uuid.uuid4().hex[:10]}"
    config = tmp_path / "k.yaml"
    config.write_text(json.dumps({"bus": {"kind": "kinesis", "endpoint_url": endpoint, "streams": {TOPIC: stream}}}))
    env = {**AWS_ENV, "AWS_SECRET_ACCESS_KEY": "s3cr3t-never-printed"}
    created = ctxplane("bus", "create", "--config", str(config), "--topic", TOPIC, "--partitions", "2", env=env)
    assert created.returncode == 0, created.stderr
    assert created.stdout == f"topic {TOPIC} created with 2 shards (stream {stream})\n"
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"".join(orjson.dumps(_env(i)) + b"\n" for i in range(12)))
    published = ctxplane("bus", "publish", "--config", str(config), "--topic", TOPIC, str(source), env=env)
    assert published.returncode == 0, published.stderr
    assert published.stdout == f"published 12 records to {TOPIC} (stream {stream}, 2 shards)\n"
    wrong = ctxplane("bus", "publish", "--config", str(config), "--topic", TOPIC, "--partitions", "3", str(source), env=env)
    assert wrong.returncode == 2 and wrong.stderr.strip().endswith("--partitions 3 does not match")
    assert "s3cr3t" not in created.stderr + published.stderr + wrong.stderr


# -- against a fake client (AWS behaviour the emulator does not have) ---------------------------------


async def test_an_expired_iterator_is_re_got_from_the_same_position() -> None:
    fake = FakeKinesis()
    async with _fake_bus(fake, reads_per_second=1000) as bus:
        await bus.create_topic(TOPIC, 1)
        refs = await bus.publish_many(TOPIC, [("k", _env(i)) for i in range(6)])
        first = await bus.read(TOPIC, 0, None, 3, 1 << 20)
        fake.expire_iterators()
        second = await bus.read(TOPIC, 0, first.next_position, 3, 1 << 20)
        assert [r.offset for r in first.records + second.records] == [r.offset for r in refs]
        assert [op for op, _ in fake.calls].count("get_shard_iterator") == 2


async def test_a_stale_sequence_number_falls_back_to_trim_horizon() -> None:
    fake = FakeKinesis()
    async with _fake_bus(fake, reads_per_second=1000) as bus:
        await bus.create_topic(TOPIC, 1)
        refs = await bus.publish_many(TOPIC, [("k", _env(i)) for i in range(3)])
        fake.fail["get_shard_iterator"] = ["InvalidArgumentException"]
        got = await bus.read(TOPIC, 0, "5", 10, 1 << 20)
        assert [r.offset for r in got.records] == [r.offset for r in refs]  # re-read; intake dedupes


async def test_throttling_backs_off_with_jitter_then_succeeds(monkeypatch: pytest.MonkeyPatch) -> None:
    sleeps: list[float] = []
    real_sleep = anyio.sleep

    async def recording_sleep(delay: float) -> None:
        sleeps.append(delay)
        await real_sleep(0)

    monkeypatch.setattr(anyio, "sleep", recording_sleep)  # the adapter's backoff sleeps
    fake = FakeKinesis()
    async with _fake_bus(fake, reads_per_second=1e6) as bus:
        await bus.create_topic(TOPIC, 1)
        refs = await bus.publish_many(TOPIC, [("k", _env(i)) for i in range(3)])
        sleeps.clear()
        fake.fail["get_records"] = ["ProvisionedThroughputExceededException"] * 4
        got = await bus.read(TOPIC, 0, None, 10, 1 << 20)
        assert [r.offset for r in got.records] == [r.offset for r in refs]
        backoffs = [s for s in sleeps if s > 0.0001]
        # Full jitter under an exponential cap: 0.1, 0.2, 0.4, 0.8 s.
        assert len(backoffs) == 4 and all(s <= cap for s, cap in zip(backoffs, (0.1, 0.2, 0.4, 0.8), strict=True))
        fake.fail["get_records"] = ["ProvisionedThroughputExceededException"] * 50
        with pytest.raises(BusUnavailable, match="throttled"):
            await bus.read(TOPIC, 0, got.next_position, 10, 1 << 20)


async def test_put_records_spends_one_budget_of_attempts_not_a_retry_inside_a_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    real_sleep = anyio.sleep

    async def no_wait(delay: float) -> None:
        await real_sleep(0)  # sync-ok: the back-off's pause replaced by a bare yield to the loop

    class Refusing(FakeKinesis):
        async def put_records(self, StreamName: str, Records: Any) -> dict[str, Any]:  # noqa: N803
            await super().put_records(StreamName, Records)
            return {"FailedRecordCount": len(Records),
                    "Records": [{"ErrorCode": "ProvisionedThroughputExceededException", "ErrorMessage": "slow down"}
                                for _ in Records]}

    monkeypatch.setattr(anyio, "sleep", no_wait)
    fake = Refusing()
    async with _fake_bus(fake, reads_per_second=1e6) as bus:
        await bus.create_topic(TOPIC, 1)
        fake.calls.clear()
        fake.fail["put_records"] = ["ProvisionedThroughputExceededException"] * 3  # the call itself, then refusals
        with pytest.raises(BusError, match="2 records still refused after 8 attempts"):
            await bus.publish_many(TOPIC, [("k", _env(i)) for i in range(2)])
        assert [op for op, _ in fake.calls].count("put_records") == 8  # not 3 + 7 (or up to 8 x 8)


async def test_get_records_on_one_shard_are_paced() -> None:
    fake = FakeKinesis()
    async with _fake_bus(fake, reads_per_second=20) as bus:  # 50 ms apart (Kinesis: 5/s, 200 ms)
        await bus.create_topic(TOPIC, 2)
        await bus.publish_many(TOPIC, [(f"m-{i}", _env(i)) for i in range(40)])
        for _ in range(6):
            await bus.read(TOPIC, 0, None, 1, 1 << 20)  # new cursor each time: one GetRecords per read
            bus._reader.cursors.clear()
        times = [t for op, t in fake.calls if op == "get_records"]
        assert all(b - a >= 0.049 for a, b in zip(times, times[1:], strict=False))
        start = anyio.current_time()
        await bus.read(TOPIC, 1, None, 1, 1 << 20)  # another shard has its own budget
        assert anyio.current_time() - start < 0.04


async def test_a_closed_shard_with_a_null_iterator_reports_its_ending_as_drained() -> None:
    fake = FakeKinesis()
    async with _fake_bus(fake, reads_per_second=1000, start_position="latest") as bus:
        await bus.create_topic(TOPIC, 1)
        before = await bus.publish_many(TOPIC, [(f"m-{i}", _env(i)) for i in range(8)])
        fake.split("s", "shardId-000000000000")
        after = await bus.publish_many(TOPIC, [(f"m-{i}", _env(i)) for i in range(8, 20)])
        shards = await bus.shards(TOPIC)
        assert shards[1] == ShardInfo(1, "shardId-000000000001", (0,), shards[1].starting_sequence, None)
        records, position = await _drain(bus, 0, before[3].offset)
        assert [r.offset for r in records] == [r.offset for r in before[4:]]
        assert position is not None and position == shards[0].ending_sequence and is_drained(shards[0], position)
        assert int(position) > int(before[-1].offset)  # AWS: the ending is a bound above the last record
        # A child starts at TRIM_HORIZON even with start_position=latest: it continues its parent's keys.
        children = [r for p in (1, 2) for r in (await _drain(bus, p, None))[0]]
        assert sorted(r.offset for r in children) == sorted(r.offset for r in after)


async def test_publish_many_batches_500_records_per_call_and_pages_list_shards() -> None:
    fake = FakeKinesis(page_size=2)
    async with _fake_bus(fake) as bus:
        refs = await bus.publish_many(TOPIC, [(f"m-{i}", _env(i)) for i in range(1200)], partitions=5)
        assert len(refs) == 1200 and len({r.offset for r in refs}) == 1200
        assert [op for op, _ in fake.calls].count("put_records") == 3
        assert await bus.list_partitions(TOPIC) == [0, 1, 2, 3, 4]  # three pages of ListShards
        long_key = "x" * 300  # over Kinesis' 256-character limit: sent as its SHA-256 hex
        assert (await bus.publish(TOPIC, long_key, _env(1))).offset_kind == "kinesis_sequence"
        with pytest.raises(TypeError):
            await bus.publish(TOPIC, "k", {"not json": {1, 2}})
        with pytest.raises(BusError, match="1 MiB"):
            await bus.publish(TOPIC, "k", {"big": "x" * (1 << 20)})


def test_settings_need_a_region_unless_the_endpoint_is_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    with pytest.raises(UsageError, match="^bus.region: not set"):
        kinesis_bus_from_settings(BusSettings(kind="kinesis"))
    assert isinstance(kinesis_bus_from_settings(BusSettings(kind="kinesis", endpoint_url="http://127.0.0.1:1")), KinesisBus)
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    assert kinesis_bus_from_settings(BusSettings(kind="kinesis")).region == "eu-west-1"


def test_drained_means_the_committed_position_reached_the_ending() -> None:
    open_shard = ShardInfo(0, "shardId-000000000000", (), "1", None)
    closed = ShardInfo(0, "shardId-000000000000", (), "1", "100")
    assert not is_drained(open_shard, "1000")
    assert not is_drained(closed, None) and not is_drained(closed, "99")
    assert is_drained(closed, "100") and is_drained(closed, "1000")


def test_the_kinesis_profile_loads() -> None:
    from ctxplane.config.settings import load_settings

    settings = load_settings(Path(__file__).parents[3] / "config" / "profiles" / "kinesis.yaml")
    assert settings.bus.kind == "kinesis" and settings.store.backend == "postgresql"
    assert settings.leases.enabled and settings.leases.renew_every_s < settings.leases.duration_s


async def test_millis_behind_latest_is_kept_per_shard_and_forgotten_when_not_renewed(monkeypatch: pytest.MonkeyPatch) -> None:
    import ctxplane.runtime.bus.kinesis.progress as progress_module

    class Clock:
        now = 1000.0

        def monotonic(self) -> float:
            return self.now

    clock = Clock()
    monkeypatch.setattr(progress_module, "time", clock)
    fake = FakeKinesis()
    async with _fake_bus(fake, reads_per_second=1000) as bus:
        await bus.create_topic(TOPIC, 2)
        await bus.publish_many(TOPIC, [("k", _env(i)) for i in range(5)])
        partition = next(p for p in (0, 1) if fake.streams["s"][f"shardId-{p:012d}"].records)
        assert bus.behind_latest_ms(TOPIC, partition) is None  # nothing read yet
        first = await bus.read(TOPIC, partition, None, 2, 1 << 20)  # records remain after this page
        assert bus.behind_latest_ms(TOPIC, partition) == 1000
        await _drain(bus, partition, first.next_position)
        assert bus.behind_latest_ms(TOPIC, partition) == 0  # at the tip
        assert bus.behind_latest_ms(TOPIC, 1 - partition) is None
        assert bus.behind_latest_ms("no-such-topic", 0) is None
        # No GetRecords for longer than the TTL (its reader stopped, e.g. a lease moved): unknown.
        clock.now += progress_module._BEHIND_TTL_S + 1
        assert bus.behind_latest_ms(TOPIC, partition) is None


async def test_the_file_bus_reports_no_millis_behind(tmp_path: Path) -> None:
    from ctxplane.runtime.bus import FileBus

    async with FileBus(tmp_path) as bus:
        await bus.publish(TOPIC, "k", _env(1), partitions=1)
        assert bus.behind_latest_ms(TOPIC, 0) is None
