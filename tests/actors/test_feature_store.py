"""The feature plane's store programs against a brute-force oracle, on every backend.

Random traffic goes through the real intake rules, the apply program (random batch splits and
group-commit groupings) and the feature writer; answers come from ``FeaturePlane.read_program`` (one
read snapshot) and the served snapshot. The oracle is a plain filter over the distinct events,
``as_of − d < ts ≤ as_of`` (docs/architecture.md §Exact windows), with amounts summed as decimals.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctxplane.actors.serve.features import FeaturePlane, build_feature_plane
from ctxplane.actors.tables.features import prune_program, retention_meta_program
from ctxplane.config.settings import TRAFFIC_TOPICS, Settings, StoreSettings
from ctxplane.contracts.canonical import digest
from ctxplane.contracts.classes import Plane
from ctxplane.contracts.features.serve import (
    FeatureRequest,
    build_snapshot,
    parse_feature_request,
)
from ctxplane.contracts.intake import Accepted, IntakeRules
from ctxplane.contracts.messages import ApplyBatch
from ctxplane.runtime.store import StoreBackend, open_store
from tests.support.apply import apply, batch, state_digest
from tests.support.stores import fresh_dsn
from tests.support.workload import (
    BASE_TS,
    PINS,
    TRAFFIC_BASELINE,
    TRAFFIC_FRAUD,
    envelope,
    event_id,
)

MINUTE = 60_000_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR
ORIGIN = BASE_TS - BASE_TS % DAY  # 2026-02-07T00:00:00Z: a day boundary
SPAN = 9 * DAY
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

# The default policy (config/policies/features.v0.yaml), spelled out independently of the product.
WINDOWS = (("1h", HOUR), ("24h", DAY), ("7d", 7 * DAY))
CORE = ("event_count", "amount_sum", "last_event_ts_utc")
VELOCITY = ("count", "amount_sum", "amount_min", "amount_max", "last_event_ts_utc")
GROUPS = (("core_features", "v1", ("flow_id",), CORE),
          ("entity_velocity", "v1", ("instrument_id", "account_id", "device_id", "ip_id", "merchant_id"), VELOCITY))
RETENTION = 7 * DAY + HOUR  # longest ttl (7d) + the default grace (3600 s)

FLOWS = ("f-1", "f-2", "f-3")
MERCHANTS = ("m-1", "m-2", "m-3")
TOPIC_TYPES = dict([TRAFFIC_FRAUD, TRAFFIC_BASELINE])
ABSENT = object()


def iso(ts_us: int) -> str:
    return (EPOCH + timedelta(microseconds=ts_us)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Event:
    eid: str
    topic: str
    ts_us: int
    flow: str | None
    merchant: str | None
    sent_amount: object  # as it appears in the payload (ABSENT: no "amount" field)
    amount: Decimal | None  # what the oracle counts

    def key(self, key_type: str) -> str | None:
        return {"flow_id": self.flow, "merchant_id": self.merchant}.get(key_type)

    def envelope(self) -> dict[str, Any]:
        payload: dict[str, Any] = {"kind": "AUTH_REQUEST"}
        if self.flow is not None:
            payload["flow_id"] = self.flow
        if self.merchant is not None:
            payload["merchant_id"] = self.merchant
        if self.sent_amount is not ABSENT:
            payload["amount"] = self.sent_amount
        return envelope(TOPIC_TYPES[self.topic], payload, eid=self.eid, ts_utc=iso(self.ts_us))


# -- strategies -----------------------------------------------------------------------------------

def _boundary(unit: int) -> st.SearchStrategy[int]:
    return st.builds(lambda k, nudge: ORIGIN + k * unit + nudge, st.integers(1, SPAN // unit), st.sampled_from((-1, 0, 0, 1)))


# Bursts around a few instants, so that events of one key share minute, hour and day tiles across batches.
BURSTS = tuple(ORIGIN + offset for offset in (DAY + 5 * HOUR, 4 * DAY + 23 * HOUR + 30 * MINUTE, 8 * DAY + 12 * HOUR))
TIMES = st.one_of(
    st.integers(ORIGIN, ORIGIN + SPAN), _boundary(MINUTE), _boundary(HOUR), _boundary(DAY),
    st.builds(lambda center, offset: center + offset, st.sampled_from(BURSTS), st.integers(-2 * HOUR, 2 * HOUR)),
    st.builds(lambda center, offset: center + offset, st.sampled_from(BURSTS), st.integers(-MINUTE, MINUTE)),
)


def _amount(cents: int, how: str) -> tuple[object, Decimal | None]:
    exact = Decimal(cents) / 100
    if how == "int":
        return cents // 100, Decimal(cents // 100)
    if how == "float":
        return cents / 100, exact
    if how == "string":
        return f" {exact:.2f}" if cents % 3 == 0 else f"{exact:.2f}", exact
    if how == "junk":
        return "n/a", None  # not numeric: counted in `count` only
    if how == "null":
        return None, None
    return ABSENT, None


AMOUNTS = st.builds(_amount, st.integers(-50_000, 1_000_000),
                    st.sampled_from(("int", "float", "float", "string", "string", "absent", "junk", "null")))
EVENT_PARTS = st.tuples(
    st.sampled_from(sorted(TOPIC_TYPES)), TIMES,
    st.one_of(st.sampled_from(FLOWS), st.sampled_from(FLOWS), st.none()),
    st.one_of(st.sampled_from(MERCHANTS), st.sampled_from(MERCHANTS), st.none()),
    AMOUNTS,
)
# An as_of relative to an event: on it, just before/after it, and where it leaves each window.
DELTAS = (0, -1, 1, HOUR - 1, HOUR, DAY - 1, DAY, 7 * DAY - 1, 7 * DAY, 7 * DAY + 1)
AS_OF = st.one_of(
    st.tuples(st.just("event"), st.integers(0, 10_000), st.sampled_from(DELTAS)),
    st.tuples(st.just("time"), TIMES, st.just(0)),
    st.tuples(st.just("after"), st.integers(0, 3 * DAY), st.just(0)),  # after every event: STALE_INPUT_BASIS
)


def _events(parts: list[tuple[Any, ...]]) -> list[Event]:
    return [Event(event_id("traffic", i), topic, ts, flow, merchant, sent, amount)
            for i, (topic, ts, flow, merchant, (sent, amount)) in enumerate(parts)]


# -- the bus, batching and group commits ---------------------------------------------------------

Partitions = dict[tuple[str, int], list[Event]]


def _place(records: list[Event], rng: random.Random) -> Partitions:
    """Assign records to random partitions of their topic, in a random (out-of-order) sequence."""
    count = rng.randint(1, 3)
    shuffled = records[:]
    rng.shuffle(shuffled)
    out: Partitions = {}
    for record in shuffled:
        out.setdefault((record.topic, rng.randrange(count)), []).append(record)
    return out


def _groups(parts: Partitions, rules: IntakeRules, rng: random.Random, *, redeliver: bool) -> list[list[ApplyBatch]]:
    """Cut each partition into random batches; interleave them into random group commits."""
    queues: dict[tuple[str, int], list[ApplyBatch]] = {}
    for (topic, p), records in sorted(parts.items()):
        cuts, start = [], 0
        while start < len(records):
            size = rng.randint(1, 12)
            envs = [r.envelope() for r in records[start:start + size]]
            cuts.append(batch(topic, p, start, envs, rules=rules, plane=Plane.FEATURES))
            start += size
        if redeliver:  # the bus re-delivers a batch it already delivered (same offsets)
            original = rng.randrange(len(cuts))
            cuts.insert(rng.randint(original + 1, len(cuts)), cuts[original])
        queues[(topic, p)] = cuts
    groups: list[list[ApplyBatch]] = []
    while any(queues.values()):
        group = []
        for _ in range(rng.randint(1, 4)):
            live = [k for k, q in sorted(queues.items()) if q]
            if not live:
                break
            group.append(queues[rng.choice(live)].pop(0))
        groups.append(group)
    return groups


def _event_ids(group: list[ApplyBatch]) -> Iterator[str]:
    for b in group:
        for v in b.verdicts:
            assert isinstance(v, Accepted), v  # every generated record is a valid traffic event
            yield v.event_id


async def _open(backend: str, tmp_path: Path, plane: FeaturePlane) -> StoreBackend:
    directory = tmp_path / uuid.uuid4().hex[:12]
    directory.mkdir()
    store = await open_store(StoreSettings(dsn=await fresh_dsn(backend, directory)))
    await store.migrate()
    await store.write(retention_meta_program(plane.retention_us))  # as the store-writer does at start
    return store


# -- the oracle ---------------------------------------------------------------------------------

def _values(events: list[Event], key_type: str, key_id: str, as_of: int, duration: int, aggs: tuple[str, ...]) -> dict[str, Any]:
    inside = [e for e in events if e.key(key_type) == key_id and as_of - duration < e.ts_us <= as_of]
    amounts = [e.amount for e in inside if e.amount is not None]
    every = {
        "count": len(inside),
        "event_count": len(inside),
        "amount_sum": float(sum(amounts, Decimal(0))),
        "amount_min": float(min(amounts)) if amounts else None,
        "amount_max": float(max(amounts)) if amounts else None,
        "last_event_ts_utc": iso(max(e.ts_us for e in inside)) if inside else None,
    }
    return {name: every[name] for name in aggs}


def _request(as_of: int, keys: list[tuple[str, str]]) -> FeatureRequest:
    parsed = parse_feature_request({
        "pins": PINS, "as_of_time_utc": iso(as_of), "request_id": "r",
        "feature_keys": [{"key_type": t, "key_id": k} for t, k in keys],
        "feature_groups": [{"name": "entity_velocity", "version": "v1"}, {"name": "core_features", "version": "v1"}],
    }, max_wait_ms=0)
    assert isinstance(parsed, FeatureRequest), parsed
    return parsed


def _expected(plane: FeaturePlane, events: list[Event], parts: Partitions, as_of: int, keys: list[tuple[str, str]],
              *, seen: set[tuple[str, str]], cutoff: int | None) -> dict[str, Any]:
    """The whole served snapshot, from first principles (windows reaching before ``cutoff`` elided)."""
    features: dict[str, Any] = {}
    beyond = False
    for name, _version, key_types, aggs in GROUPS:
        features[name] = {}
        for key_type, key_id in keys:
            if key_type in key_types:
                per_window = {}
                for window, duration in WINDOWS:
                    if cutoff is not None and as_of - duration < cutoff:
                        beyond = True
                        per_window[window] = "<pruned>"
                    else:
                        per_window[window] = _values(events, key_type, key_id, as_of, duration, aggs)
                features[name][f"{key_type}:{key_id}"] = per_window
    watermark = iso(max(r.ts_us for records in parts.values() for r in records))
    missing = [{"key_type": t, "key_id": k} for t, k in keys if (t, k) not in seen]
    stale = watermark < iso(as_of)
    flags = sorted(name for name, raised in (("MISSING_FEATURE_STATE", bool(missing)), ("STALE_INPUT_BASIS", stale),
                                             ("AS_OF_BEYOND_RETENTION", beyond)) if raised)
    groups = [{"name": "core_features", "version": "v1"}, {"name": "entity_velocity", "version": "v1"}]
    applied = {"stream": "ctxplane.features",
               "topics": {topic: {str(p): {"next_offset": str(len(records)), "offset_kind": "file_line"}
                                  for (t, p), records in sorted(parts.items()) if t == topic}
                          for topic in sorted({t for t, _ in parts})}}
    return {
        "pins": PINS,
        "as_of_time_utc": iso(as_of),
        "feature_groups": groups,
        "feature_def_policy_rev": plane.policy.rev(),
        "eb_offset_basis": {
            "stream": "ctxplane.features", "offset_kind": "file_line",
            "offsets": [{"topic": t, "partition": p, "offset": str(len(records))} for (t, p), records in sorted(parts.items())],
            "basis_digest": digest(applied),
            "window_end_utc": watermark,
        },
        "run_config_digest": plane.run_config_digest,
        "features": features,
        "freshness": {"state": "AMBER" if flags else "GREEN", "flags": flags,
                      "stale_groups": groups if stale else [], "missing_groups": [], "missing_feature_keys": missing},
    }


async def _served(store: StoreBackend, plane: FeaturePlane, as_of: int, keys: list[tuple[str, str]],
                  cutoff: int | None) -> dict[str, Any]:
    request = _request(as_of, keys)
    read = await store.read(plane.read_program(request))
    snapshot = build_snapshot(plane.policy, request, read, run_config_digest=plane.run_config_digest, offset_kind="file_line")
    assert snapshot.pop("snapshot_hash") == digest(snapshot)  # names exactly what was served
    if cutoff is not None:
        for per_key in snapshot["features"].values():
            for per_window in per_key.values():
                for window, duration in WINDOWS:
                    if as_of - duration < cutoff:
                        per_window[window] = "<pruned>"
    return snapshot


def test_the_oracle_spells_out_the_default_policy() -> None:
    policy = build_feature_plane(Settings()).policy
    assert [(g.name, g.version, set(g.key_types), tuple(g.aggregations),
             tuple((w.window, w.duration_us) for w in g.windows)) for g in policy.feature_groups] == [
        (name, version, set(key_types), aggs, WINDOWS) for name, version, key_types, aggs in GROUPS]
    assert build_feature_plane(Settings()).retention_us == RETENTION


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    parts=st.lists(EVENT_PARTS, min_size=1, max_size=40),
    duplicates=st.lists(st.integers(0, 10_000), max_size=8),
    as_ofs=st.lists(st.tuples(AS_OF, st.booleans()), min_size=1, max_size=6),
    seed=st.integers(0, 2**32),
    prune_at=st.sampled_from((0.5, 0.75, 1.0)),
)
async def test_store_answers_equal_brute_force_for_any_batching_with_pruning(
    backend: str, tmp_path: Path, parts: list[tuple[Any, ...]], duplicates: list[int],
    as_ofs: list[tuple[tuple[str, int, int], bool]], seed: int, prune_at: float,
) -> None:
    rng = random.Random(seed)
    plane = build_feature_plane(Settings())
    rules = IntakeRules(Plane.FEATURES, frozenset(TRAFFIC_TOPICS), feature_key_types=plane.key_types,
                        parse_amount=plane.parse_amount)
    # The last event closes the ~9 days, so that pruning at the watermark has old state to drop.
    events = _events([*parts, (TRAFFIC_FRAUD[0], ORIGIN + SPAN, "f-3", "m-3", (1, Decimal(1)))])
    records = events + [events[i % len(events)] for i in duplicates]  # the same event delivered again
    keys = [("flow_id", f) for f in FLOWS] + [("merchant_id", m) for m in MERCHANTS]

    # Store A: one random placement and batching, no pruning.
    parts_a = _place(records, rng)
    store_a = await _open(backend, tmp_path, plane)
    # Store B: another placement, batching, grouping and a re-delivered batch; pruned midway.
    parts_b = _place(records, rng)
    store_b = await _open(backend, tmp_path, plane)
    try:
        for group in _groups(parts_a, rules, rng, redeliver=False):
            await apply(store_a, group, features=plane.writer)
        groups_b = _groups(parts_b, rules, rng, redeliver=True)
        split = max(1, round(len(groups_b) * prune_at))  # prune after that many group commits
        for group in groups_b[:split]:
            await apply(store_b, group, features=plane.writer)
        watermark = max(b.watermark_us for g in groups_b[:split] for b in g if b.watermark_us is not None)
        cutoff = await store_b.write(prune_program(watermark, plane.retention_us))
        assert cutoff == watermark - RETENTION
        for group in groups_b[split:]:  # some of these are older than the cut-off: late events
            await apply(store_b, group, features=plane.writer)

        # Same events, any batching / interleaving / re-delivery / pruning: the same semantic state.
        assert await state_digest(store_a) == await state_digest(store_b)

        # Both stores serve from the cut-off implied by their (equal) basis — final watermark minus
        # retention — not from how far pruning got: their snapshots are identical, hash included.
        logical = max(e.ts_us for e in events) - RETENTION
        assert logical >= cutoff  # pruning never passes the logical cut-off
        # A key is seen while a kept day tile holds it (a day tile straddling the cut-off is kept whole).
        kept_from = logical - logical % DAY
        seen_kept = {(t, k) for e in events for t in ("flow_id", "merchant_id")
                     if (k := e.key(t)) is not None and e.ts_us > kept_from}
        for (kind, value, delta), ask_unseen in as_ofs:
            if kind == "event":
                as_of = events[value % len(events)].ts_us + delta
            elif kind == "time":
                as_of = value
            else:
                as_of = max(e.ts_us for e in events) + 1 + value
            asked = keys + ([("flow_id", "f-404"), ("device_id", "d-1")] if ask_unseen else [])
            request = _request(as_of, asked)
            snap_a = build_snapshot(plane.policy, request, await store_a.read(plane.read_program(request)),
                                    run_config_digest=plane.run_config_digest, offset_kind="file_line")
            snap_b = build_snapshot(plane.policy, request, await store_b.read(plane.read_program(request)),
                                    run_config_digest=plane.run_config_digest, offset_kind="file_line")
            assert {k: v for k, v in snap_a.items() if k not in ("eb_offset_basis", "snapshot_hash")} == \
                   {k: v for k, v in snap_b.items() if k not in ("eb_offset_basis", "snapshot_hash")}, iso(as_of)
            got_a = await _served(store_a, plane, as_of, asked, logical)
            assert got_a == _expected(plane, events, parts_a, as_of, asked, seen=seen_kept, cutoff=logical), iso(as_of)
            got_b = await _served(store_b, plane, as_of, asked, logical)
            assert got_b == _expected(plane, events, parts_b, as_of, asked, seen=seen_kept, cutoff=logical), iso(as_of)
    finally:
        await store_a.aclose()
        await store_b.aclose()


# -- small explicit cases -----------------------------------------------------------------------

def _traffic(eid: str, ts_us: int, amount: object = ABSENT, flow: str = "f-1", merchant: str | None = "m-1") -> Event:
    return Event(event_id(eid), TRAFFIC_FRAUD[0], ts_us, flow, merchant, amount, None)


async def _load(store_dsn: str, events: list[Event]) -> tuple[StoreBackend, FeaturePlane]:
    plane = build_feature_plane(Settings())
    rules = IntakeRules(Plane.FEATURES, frozenset(TRAFFIC_TOPICS), feature_key_types=plane.key_types,
                        parse_amount=plane.parse_amount)
    store = await open_store(StoreSettings(dsn=store_dsn))
    await store.migrate()
    await store.write(retention_meta_program(plane.retention_us))
    await apply(store, [batch(TRAFFIC_FRAUD[0], 0, 0, [e.envelope() for e in events], rules=rules, plane=Plane.FEATURES)],
                features=plane.writer)
    return store, plane


async def _windows(store: StoreBackend, plane: FeaturePlane, as_of: int, key: tuple[str, str] = ("flow_id", "f-1")) -> dict[str, Any]:
    request = _request(as_of, [key])
    read = await store.read(plane.read_program(request))
    return build_snapshot(plane.policy, request, read, run_config_digest=plane.run_config_digest, offset_kind="file_line")


async def test_window_edges_are_left_open_and_right_closed(store_dsn: str) -> None:
    t = ORIGIN + 5 * DAY  # a day boundary
    events = [_traffic("edge-1h", t - HOUR, 5), _traffic("inside", t - HOUR + 1, "10.25"), _traffic("on-as-of", t, 2.5),
              _traffic("after", t + 1, 1000), _traffic("edge-7d", t - 7 * DAY, 7)]
    store, plane = await _load(store_dsn, events)
    try:
        snap = await _windows(store, plane, t)
        assert snap["features"]["core_features"]["flow_id:f-1"] == {
            "1h": {"event_count": 2, "amount_sum": 12.75, "last_event_ts_utc": iso(t)},
            "24h": {"event_count": 3, "amount_sum": 17.75, "last_event_ts_utc": iso(t)},
            "7d": {"event_count": 3, "amount_sum": 17.75, "last_event_ts_utc": iso(t)},
        }
        velocity = (await _windows(store, plane, t + 7 * DAY, ("merchant_id", "m-1")))["features"]["entity_velocity"]
        assert velocity["merchant_id:m-1"]["7d"] == {  # (t, t + 7d]: only the event 1 µs after t
            "count": 1, "amount_sum": 1000.0, "amount_min": 1000.0, "amount_max": 1000.0, "last_event_ts_utc": iso(t + 1)}
        assert type(velocity["merchant_id:m-1"]["1h"]["amount_sum"]) is float  # a stable JSON type, even when empty
        assert velocity["merchant_id:m-1"]["1h"] == {
            "count": 0, "amount_sum": 0.0, "amount_min": None, "amount_max": None, "last_event_ts_utc": None}
    finally:
        await store.aclose()


async def test_pruning_keeps_windows_inside_retention_and_flags_the_others(store_dsn: str) -> None:
    day8 = ORIGIN + 8 * DAY
    events = [_traffic("old", ORIGIN + HOUR, 1), _traffic("mid", ORIGIN + 4 * DAY, 2), _traffic("new", day8, 4)]
    store, plane = await _load(store_dsn, events)
    try:
        before = await state_digest(store)
        assert await store.write(prune_program(day8, plane.retention_us)) == day8 - RETENTION  # = ORIGIN + 23h
        assert await state_digest(store) == before
        inside = await _windows(store, plane, day8)  # 7d window starts at ORIGIN + 1d, after the cut-off
        assert inside["features"]["core_features"]["flow_id:f-1"]["7d"] == {
            "event_count": 2, "amount_sum": 6.0, "last_event_ts_utc": iso(day8)}
        assert inside["freshness"] == {"state": "GREEN", "flags": [], "stale_groups": [], "missing_groups": [],
                                       "missing_feature_keys": []}
        beyond = await _windows(store, plane, ORIGIN + 7 * DAY)  # 7d window starts at ORIGIN, before the cut-off
        assert beyond["freshness"]["flags"] == ["AS_OF_BEYOND_RETENTION"] and beyond["freshness"]["state"] == "AMBER"
        assert beyond["features"]["core_features"]["flow_id:f-1"]["24h"]["event_count"] == 0
        # Beyond retention the values are whatever kept tiles hold: the day tile straddling the cut-off
        # is kept whole and still counts "old" ...
        assert beyond["features"]["core_features"]["flow_id:f-1"]["7d"]["event_count"] == 2
        # ... while (ORIGIN + 30m, ORIGIN + 7d + 30m] reads "old"'s pruned minute tile and misses it.
        shifted = await _windows(store, plane, ORIGIN + 7 * DAY + 30 * MINUTE)
        assert shifted["freshness"]["flags"] == ["AS_OF_BEYOND_RETENTION"]
        assert shifted["features"]["core_features"]["flow_id:f-1"]["7d"]["event_count"] == 1
        # Pruning again at an earlier watermark never moves the cut-off back.
        assert await store.write(prune_program(day8 - DAY, plane.retention_us)) == day8 - RETENTION
    finally:
        await store.aclose()


async def test_a_feature_key_change_changes_the_digest(store_dsn: str, tmp_path: Path) -> None:
    events = [_traffic("a", ORIGIN + HOUR, 5), _traffic("b", ORIGIN + 2 * HOUR, 10)]
    store, _plane = await _load(store_dsn, events)
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other, _ = await _load(f"sqlite:///{other_dir / 'store.sqlite'}",
                           [events[0], _traffic("b", ORIGIN + 2 * HOUR, 10, merchant="m-2")])
    try:
        assert await state_digest(store) != await state_digest(other)
    finally:
        await store.aclose()
        await other.aclose()
