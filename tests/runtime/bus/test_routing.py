"""Partition routing: stable across processes, roughly uniform, keys as docs/events.md §Publishing and routing says."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ctxplane.runtime.bus import partition_for, partition_key_for
from ctxplane.runtime.exceptions import BusError

# Pinned routes: changing the hash would move every existing key to another partition, so these
# values must never change.
GOLDEN = [
    ("m-1", 2, 0),
    ("m-2", 2, 1),
    ("m-7", 2, 0),
    ("m-1", 4, 0),
    ("flow-7", 8, 3),
    ("", 3, 1),
    ("é", 5, 1),
    ("42", 16, 13),
]


@pytest.mark.parametrize(("key", "partitions", "expected"), GOLDEN)
def test_golden_routes(key: str, partitions: int, expected: int) -> None:
    assert partition_for(key, partitions) == expected


@pytest.mark.parametrize(("key", "partitions", "expected"), GOLDEN)
def test_route_is_sha256_prefix_mod_n(key: str, partitions: int, expected: int) -> None:
    digest = hashlib.sha256(key.encode()).digest()
    assert int.from_bytes(digest[:8], "big") % partitions == expected


def test_routes_do_not_depend_on_the_process_hash_seed() -> None:
    code = (
        "from ctxplane.runtime.bus import partition_for;"
        "print([partition_for(f'key-{i}', 7) for i in range(50)])"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2", "12345")
    }
    assert len(outputs) == 1
    assert outputs.pop().strip() == str([partition_for(f"key-{i}", 7) for i in range(50)])


def test_routing_is_roughly_uniform() -> None:
    partitions = 8
    keys = 16_000
    counts = Counter(partition_for(f"m-{i}", partitions) for i in range(keys))
    mean = keys / partitions
    assert set(counts) == set(range(partitions))
    # Binomial sd is ~42 here; 10 % of the mean (200) is ~4.7 sd.
    assert all(abs(count - mean) < 0.10 * mean for count in counts.values()), counts


@given(st.text(), st.integers(min_value=1, max_value=10_000))
def test_every_key_has_a_route_in_range(key: str, partitions: int) -> None:
    route = partition_for(key, partitions)
    assert 0 <= route < partitions
    assert partition_for(key, partitions) == route


def test_lone_surrogates_route() -> None:
    assert 0 <= partition_for("\ud800", 3) < 3


@pytest.mark.parametrize("partitions", [0, -1])
def test_partition_count_must_be_positive(partitions: int) -> None:
    with pytest.raises(ValueError, match="partitions must be >= 1"):
        partition_for("k", partitions)


# ---------------------------------------------------------------- partition_key_for


def _env(payload: object = None, event_id: object = "e" * 64) -> dict[str, object]:
    envelope: dict[str, object] = {"event_id": event_id, "event_type": "x"}
    if payload is not None:
        envelope["payload"] = payload
    return envelope


def test_key_field_wins() -> None:
    envelope = _env({"merchant_id": "m-1", "flow_id": "f-1", "instrument_id": "inst-3"})
    assert partition_key_for(envelope, "instrument_id") == "inst-3"


def test_default_chain_merchant_then_flow_then_event_id() -> None:
    assert partition_key_for(_env({"merchant_id": "m-1", "flow_id": "f-1"})) == "m-1"
    assert partition_key_for(_env({"flow_id": "f-1"})) == "f-1"
    assert partition_key_for(_env({"other": 1})) == "e" * 64
    assert partition_key_for(_env()) == "e" * 64


def test_missing_key_field_falls_back_to_the_chain() -> None:
    assert partition_key_for(_env({"merchant_id": "m-2"}), "instrument_id") == "m-2"


def test_integers_are_stringified_and_unusable_values_skipped() -> None:
    assert partition_key_for(_env({"merchant_id": 17})) == "17"
    assert partition_key_for(_env(event_id=123)) == "123"
    # empty strings, booleans, floats, null and containers are not keys
    for bad in ("", True, 1.5, None, [1], {"a": 1}):
        assert partition_key_for(_env({"merchant_id": bad, "flow_id": "f-9"})) == "f-9"


def test_non_object_payload_uses_event_id() -> None:
    assert partition_key_for(_env(["m-1"])) == "e" * 64


def test_no_key_at_all_is_a_bus_error() -> None:
    with pytest.raises(BusError, match=r"no partition key.*payload\.acct, payload\.merchant_id"):
        partition_key_for({"payload": {}}, "acct")
    with pytest.raises(BusError, match="no partition key"):
        partition_key_for({"event_id": ""})
