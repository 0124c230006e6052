"""No payload value stops ingest, through a real `ctxplane run --once` on each backend.

Hypothesis generates payload values — huge and negative huge integers, floats, NaN and ±inf (written
as the non-JSON literals ``NaN``/``Infinity``, as a sloppy producer would), digit strings up to
thousands of digits, text with NUL, nested objects and lists. Each example puts every value into
three records, all in ONE file bus read by ONE process run (seconds, not minutes):

- an arrival event with the value as ``arrival_seq`` (and as an opaque extra field),
- an entities event with the value as ``merchant_id``,
- a traffic event with the value as ``amount`` and as the ``device_id`` feature key.

The expected outcome of each record follows from the contract alone (docs/events.md §Intake and the
BIGINT/TEXT column limits), applied to the value as JSON delivers it: the process exits 0, every
partition's checkpoint reaches the end of its file, and the ledger holds exactly one row per bad
record with the expected reason code — nothing else.
"""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path
from typing import Any

import anyio
import orjson
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.support.process import ctxplane, write_config
from tests.support.stores import fresh_dsn, query_rows
from tests.support.workload import ARRIVAL, ENTITIES, TRAFFIC_FRAUD, envelope

BIGINT_MAX = 2**63 - 1
_INVALID_JSON = object()  # the line is not JSON (NaN / Infinity literals)

_scalars = st.one_of(
    st.integers(-(2**70), 2**70),
    st.sampled_from([BIGINT_MAX, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 0, -1, True, None]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(alphabet="0123456789", min_size=1, max_size=40),
    st.integers(19, 6000).map(lambda n: "9" * n),
    st.text(max_size=12),  # includes U+0000, which PostgreSQL TEXT cannot hold
)
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
                       max_leaves=6)
# Always in every example, whatever hypothesis draws: the values that once crash-looped ingest.
EDGES: list[Any] = [2**63, 2**64 - 1, "1" * 40, "9" * 5000, -(2**63) - 1, math.nan, math.inf, -math.inf, "a\x00b",
                    {"arrival_seq": 2**63}, [2**63], 1e308, -0.0]


def _as_delivered(value: Any) -> Any:
    """``value`` as the consumer sees it after JSON (ints beyond 64 bits become floats), or _INVALID_JSON."""
    try:
        return orjson.loads(json.dumps(value))
    except orjson.JSONDecodeError:
        return _INVALID_JSON


def _arrival_reason(seq: Any) -> str | None:
    if type(seq) is int:
        return None if 0 <= seq <= BIGINT_MAX else ("PAYLOAD_INVALID" if seq > BIGINT_MAX else "JOIN_KEY_MISSING")
    if type(seq) is str and seq.isascii() and seq.isdigit():
        digits = seq.lstrip("0")
        return None if len(digits) <= 19 and int(digits or "0") <= BIGINT_MAX else "PAYLOAD_INVALID"
    return "JOIN_KEY_MISSING"


def _merchant_reason(merchant: Any) -> str | None:
    if type(merchant) is int or (type(merchant) is str and 0 < len(merchant) <= 256 and "\x00" not in merchant):
        return None
    return "JOIN_KEY_MISSING"


def _write(eb: Path, topic: str, envelopes: list[dict[str, Any]]) -> None:
    path = eb / topic / "partition=0.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"partition_key": "k", "payload": env, "published_at_utc": "2026-02-07T05:00:00.000000Z"}) for env in envelopes]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


# No shrinking: each step is a process run, and a failing example names its records anyway
# (unshrunk, a regression took 12 minutes to report).
@settings(max_examples=3, deadline=None, phases=(Phase.explicit, Phase.reuse, Phase.generate),
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large])
@given(drawn=st.lists(_values, min_size=10, max_size=40))
def test_no_payload_value_stops_ingest_and_every_bad_record_is_ledgered(backend: str, tmp_path: Path, drawn: list[Any]) -> None:
    directory = tmp_path / uuid.uuid4().hex[:8]
    directory.mkdir()
    config = write_config(directory, anyio.run(fresh_dsn, backend, directory))
    values = EDGES + drawn
    arrivals, entities, traffic = [], [], []
    expected: dict[tuple[str, str], str] = {}
    for i, value in enumerate(values):
        delivered = _as_delivered({"v": value})
        seq = delivered if delivered is _INVALID_JSON else delivered["v"]
        arrivals.append(envelope(ARRIVAL[1], {"merchant_id": f"m-{i}", "arrival_seq": value, "extra": value}, eid=f"a{i:063x}"))
        entities.append(envelope(ENTITIES[1], {"merchant_id": value, "arrival_seq": i}, eid=f"b{i:063x}"))
        traffic.append(envelope(TRAFFIC_FRAUD[1], {"flow_id": f"f-{i}", "device_id": value, "amount": value}, eid=f"c{i:063x}"))
        for topic, reason in ((ARRIVAL[0], None if seq is _INVALID_JSON else _arrival_reason(seq)),
                              (ENTITIES[0], None if seq is _INVALID_JSON else _merchant_reason(seq)),
                              (TRAFFIC_FRAUD[0], None)):
            if seq is _INVALID_JSON:
                reason = "ENVELOPE_MISSING"  # NaN / Infinity: the line is not JSON at all
            if reason is not None:
                expected[(topic, str(i))] = reason
    eb = directory / "eb"
    for topic, envelopes in ((ARRIVAL[0], arrivals), (ENTITIES[0], entities), (TRAFFIC_FRAUD[0], traffic)):
        _write(eb, topic, envelopes)

    result = ctxplane("run", "--config", str(config), "--once", timeout=60)

    assert result.returncode == 0, result.stderr[-3000:]
    dsn = _dsn(config)
    checkpoints = dict(query_rows(dsn, "SELECT topic, next_offset FROM checkpoints"))
    assert checkpoints == {ARRIVAL[0]: str(len(values)), ENTITIES[0]: str(len(values)), TRAFFIC_FRAUD[0]: str(len(values))}
    ledger = {(str(t), str(o)): str(r) for t, o, r in query_rows(dsn, "SELECT topic, source_offset, reason_code FROM apply_failures")}
    assert ledger == expected


def _dsn(config: Path) -> str:
    from ctxplane.config.settings import load_settings

    return load_settings(config).store.dsn


def test_a_payload_nested_beyond_canonical_json_is_ledgered_not_a_crash_loop(backend: str, tmp_path: Path) -> None:
    """~254 levels decode as JSON but exceed what canonical JSON (orjson) encodes: once a TypeError
    from the payload hash restarted the partition actor on that record forever."""
    deep: Any = 1
    for _ in range(300):
        deep = [deep]
    dsn = anyio.run(fresh_dsn, backend, tmp_path)
    eb = tmp_path / "eb"
    ok = envelope(ARRIVAL[1], {"merchant_id": "m-ok", "arrival_seq": 1})
    bad = envelope(ARRIVAL[1], {"merchant_id": "m-deep", "arrival_seq": 2, "extra": deep})
    _write(eb, ARRIVAL[0], [bad, ok])
    config = write_config(tmp_path, dsn, join_plane={"topics": [ARRIVAL[0]]}, features={"enabled": False})
    result = ctxplane("run", "--config", str(config), "--once", timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = query_rows(dsn, "SELECT reason_code FROM apply_failures")
    assert [r[0] for r in rows] == ["PAYLOAD_INVALID"]
    assert dict(query_rows(dsn, "SELECT topic, next_offset FROM checkpoints")) == {ARRIVAL[0]: "2"}
