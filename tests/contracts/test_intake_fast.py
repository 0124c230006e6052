"""The fast intake path gives exactly the reference path's verdict, for any record.

FastIntake.classify ≡ IntakeRules.classify: the same Accepted (every field, types included, so the
same payload hash), the same Rejected (reason and details), the same Ignored, or the same exception.
Records are generated valid and then broken on purpose — missing, duplicated, escaped and extra keys,
wrong types, integers beyond 64 bits, odd number spellings, unicode and NUL, nested payloads, bad
timestamps, other wrappers, junk bytes — and classified in sequence by one FastIntake, so what it
learns from one record (a run's identity, a minute) is exercised on the next ones.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ctxplane.config.settings import CONTEXT_TOPICS, TRAFFIC_TOPICS
from ctxplane.contracts.classes import EVENT_CLASS_BY_TYPE, IGNORED_EVENT_TYPES, PLANE_BY_CLASS, Plane
from ctxplane.contracts.envelope import PIN_FIELDS, Envelope
from ctxplane.contracts.features import parse_amount
from ctxplane.contracts.intake import MAX_RECORD_BYTES, Accepted, IntakeRules, SourceRef
from ctxplane.contracts.intake_fast import _RUN_FIELDS, FastIntake, _Envelope
from tests.support.workload import (
    ANCHOR_BASELINE,
    ANCHOR_FRAUD,
    ARRIVAL,
    ENTITIES,
    OTHER_RUN,
    PINS,
    RUN,
    TRAFFIC_BASELINE,
    TRAFFIC_FRAUD,
    envelope,
)

KEY_TYPES = ("flow_id", "instrument_id", "account_id", "device_id", "ip_id", "merchant_id")
RULES = (
    IntakeRules(Plane.JOIN, frozenset(CONTEXT_TOPICS), required_run=RUN),
    IntakeRules(Plane.JOIN, frozenset(CONTEXT_TOPICS)),
    IntakeRules(Plane.FEATURES, frozenset(TRAFFIC_TOPICS), required_run=RUN, feature_key_types=KEY_TYPES,
                parse_amount=parse_amount),
    IntakeRules(Plane.FEATURES, frozenset(TRAFFIC_TOPICS), feature_key_types=("flow_id",)),
    # A replay: pins every event must match (a function of the run's fields: the fast path serves it) ...
    IntakeRules(Plane.JOIN, frozenset(CONTEXT_TOPICS), replay_pins={"platform_run_id": RUN, "seed": 42}),
    # ... and one naming another field (the fast path steps aside).
    IntakeRules(Plane.JOIN, frozenset(CONTEXT_TOPICS), replay_pins={"producer": "tests"}),
)
TOPIC_OF = {ARRIVAL[1]: ARRIVAL[0], ENTITIES[1]: ENTITIES[0], ANCHOR_FRAUD[1]: ANCHOR_FRAUD[0],
            ANCHOR_BASELINE[1]: ANCHOR_BASELINE[0], TRAFFIC_FRAUD[1]: TRAFFIC_FRAUD[0],
            TRAFFIC_BASELINE[1]: TRAFFIC_BASELINE[0]}
EVENT_TYPES = (*EVENT_CLASS_BY_TYPE, *sorted(IGNORED_EVENT_TYPES), "no_such_type")
RUNS = (
    PINS,
    {**PINS, "platform_run_id": OTHER_RUN},
    {**PINS, "scenario_id": 7},
    {**PINS, "scenario_id": "7"},
    {**PINS, "seed": 2**64 - 1, "run_id": None},
    {**PINS, "run_id": None},
    {**PINS, "run_id": "c" * 32},
    {k: v for k, v in PINS.items() if k != "scenario_run_id"},  # scenario_run_id from run_id
    {k: v for k, v in PINS.items() if k != "parameter_hash"},
    {k: v for k, v in PINS.items() if k != "platform_run_id"},
)


class Tok(str):
    """JSON text inserted as it is: number spellings Python's json would not write, junk tokens."""


@dataclass(frozen=True)
class Key:
    """An object key written as given (an escaped spelling of a field name)."""

    text: str


class Pairs(list[tuple[Any, Any]]):
    """An object as its key-value pairs, in order (a key may repeat)."""


def dumps(value: Any, ascii_only: bool) -> str:
    """JSON text of ``value``; a list of pairs is an object that may repeat keys."""
    if isinstance(value, Tok):
        return str(value)
    if isinstance(value, Pairs):
        return "{" + ",".join(f"{k.text if isinstance(k, Key) else json.dumps(k, ensure_ascii=ascii_only)}:"
                              f"{dumps(v, ascii_only)}" for k, v in value) + "}"
    if isinstance(value, dict):
        return dumps(Pairs(value.items()), ascii_only)
    if isinstance(value, list):
        return "[" + ",".join(dumps(v, ascii_only) for v in value) + "]"
    return json.dumps(value, ensure_ascii=ascii_only)


# Valid JSON that orjson and Python read differently from the obvious: floats for big integers, -0.
NUMBERS = st.sampled_from([Tok(t) for t in (
    "-0", "-0.0", "1E2", "1.0", "1.5e-320", "18446744073709551615", "18446744073709551616", "9223372036854775808",
    "-9223372036854775809", "1" + "0" * 40,
)])
# Not JSON, or not UTF-8 (a lone surrogate: escaped, or as it is), so the whole record is junk.
JUNK = st.sampled_from([Tok(t) for t in ("1e400", "-1e400", "01", "NaN", "Infinity", "1.", ".5", "+1", "[1,]")]
                       + ["\ud800", "\udfff\ud800"])
TEXT = st.one_of(
    st.text(max_size=8),
    st.sampled_from(["", "x", "é", "日本", "a\x00b", "\"", "\\", '"payload":0', "x" * 300, "m-1", "flow-1"]),
)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.integers(-3, 300),
                    st.floats(allow_nan=False, allow_infinity=False), TEXT, NUMBERS)
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
                    max_leaves=8)
TIMESTAMPS = st.sampled_from([
    "2026-02-07T05:00:59.999999Z", "2026-02-07T05:01:60.000000Z", "2026-02-07T05:00:60.000000Z",
    "2026-02-07T05:00:99.000000Z", "2026-02-07T05:01:0\u0661.000000Z", "2026-02-07T23:59:59.000001Z", "2026-02-30T00:00:00.000000Z",
    "2026-02-07T24:00:00.000000Z", "2026-02-07T05:60:00.000000Z",
    "2026-02-07T05:00:00.00000Z", "2026-02-07T05:00:00.000000z", "2026-02-07T05:00:00.000000+00:00",
    "2026-02-07T05:00:0\uff11.000000Z", "0001-01-01T00:00:00.000000Z", "9999-12-31T23:59:59.999999Z",
    "2024-02-29T12:00:00.000000Z", "2026-02-07T05:00:00.000000Z\n",
])
FIELDS = sorted(Envelope.model_fields)


@st.composite
def payloads(draw: st.DrawFn, event_type: str) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(JSON)  # anything, not even an object
    def value(usual: st.SearchStrategy[Any]) -> Any:
        return draw(rarely(SCALARS, usual, 8))

    payload = {
        "merchant_id": value(st.sampled_from(["m-1", "m-2", 7, "", "a\x00", "m" * 257])),
        "arrival_seq": value(st.integers(0, 50) | st.sampled_from([str(2**63 - 1), str(2**63), "0042", "-1", "٣"])),
        "flow_id": value(st.sampled_from(["flow-1", 12, "", None])),
        "amount": value(st.floats(-2e9, 2e9) | st.sampled_from(["12.50", 3, "1e3", " 7 ", True, 2**63])),
        **{key: value(st.sampled_from([f"{key}-1", 5])) for key in KEY_TYPES[1:5]},
    }
    for name in draw(st.sets(st.sampled_from(sorted(payload)), max_size=3)):
        del payload[name]
    extra = draw(st.dictionaries(TEXT, JSON, max_size=2))
    return {**payload, **extra}


def rarely(strategy: st.SearchStrategy[Any], usual: st.SearchStrategy[Any], one_in: int = 5) -> st.SearchStrategy[Any]:
    """``usual`` mostly, ``strategy`` about once in ``one_in`` draws."""
    return st.integers(0, one_in - 1).flatmap(lambda n: strategy if n == 0 else usual)


@st.composite
def records(draw: st.DrawFn, plane: Plane) -> tuple[SourceRef, bytes, int | None]:
    own = [t for t, c in EVENT_CLASS_BY_TYPE.items() if PLANE_BY_CLASS[c] is plane]
    event_type = draw(rarely(st.sampled_from(EVENT_TYPES), st.sampled_from(own)))
    topic = TOPIC_OF.get(event_type, TRAFFIC_FRAUD[0])
    if draw(st.integers(0, 19)) == 0:
        topic = draw(st.sampled_from([*CONTEXT_TOPICS, *TRAFFIC_TOPICS, "fp.bus.other"]))
    env = envelope(event_type, draw(payloads(event_type)), eid=draw(st.sampled_from(["e" * 64, "e-1", "e-2"])),
                   ts_s=draw(rarely(st.integers(0, 3 * 86400), st.integers(0, 150))) + draw(st.integers(0, 999_999)) / 1e6,
                   pins=draw(rarely(st.sampled_from(RUNS), st.just(PINS), 3)))
    env = {k: v for k, v in env.items() if v is not None}
    if draw(st.booleans()):
        env["emitted_at_utc"] = draw(st.sampled_from([env["ts_utc"], "2030-01-01T00:00:00.000000Z"]) | TIMESTAMPS)
    pairs = Pairs(env.items())
    for _ in range(draw(st.sampled_from([0, 0, 0, 0, 1, 1, 2, 3]))):
        pairs = draw(mutated(pairs))
    form = draw(st.sampled_from(["file", "file", "file", "bare", "envelope", "file+key", "file+extra", "file+dup"]))
    if form == "file":
        record: Any = Pairs([("partition_key", "m-1"), ("payload", pairs), ("published_at_utc", "2026-01-01T00:00:00.000000Z")])
    elif form == "bare":
        record = pairs
    elif form == "envelope":
        record = Pairs([("envelope", pairs)])
    elif form == "file+key":
        record = Pairs([("partition_key", draw(SCALARS | JUNK)), ("payload", pairs)])
    elif form == "file+extra":
        record = Pairs([("partition_key", draw(SCALARS)), ("payload", pairs), (draw(TEXT), draw(JSON))])
    else:
        record = Pairs([("payload", draw(JSON)), ("payload", pairs)] if draw(st.booleans()) else [("payload", pairs), ("payload", draw(JSON))])
    raw = dumps(record, draw(st.booleans())).encode("utf-8", "surrogatepass")
    junk = draw(rarely(st.sampled_from([" x", "cut", "bom", "\xff"]), st.sampled_from(["", " \n"]), 10))
    if junk == "cut":
        raw = raw[: draw(st.integers(0, len(raw)))]
    elif junk == "bom":
        raw = b"\xef\xbb\xbf" + raw
    elif junk:
        raw += junk.encode("latin-1")
    # The bus's own account of the record's length: mostly none (raw is all of it), sometimes the
    # length of a record it cut short after raw.
    full_size = draw(rarely(st.sampled_from([len(raw), len(raw) + 1, 2 * MAX_RECORD_BYTES]), st.none(), 10))
    return SourceRef(topic, draw(st.integers(0, 3)), "0", "file_line"), raw, full_size


@st.composite
def mutated(draw: st.DrawFn, pairs: Pairs) -> Pairs:
    pairs = Pairs(pairs)
    names = [k for k, _ in pairs if isinstance(k, str)]
    kind = draw(st.sampled_from(["drop", "set", "set", "text", "text", "retype", "retype", "extra", "dup", "escape",
                                 "ts", "schema", "payload", "junk"]))
    name = draw(st.sampled_from(names or FIELDS))
    if kind == "drop":
        return Pairs((k, v) for k, v in pairs if k != name)
    if kind == "set":
        name = draw(st.sampled_from(FIELDS))
        return Pairs([*((k, v) for k, v in pairs if k != name), (name, draw(SCALARS | JSON))])
    if kind == "text":  # a string field at, just past or far past its limits
        name = draw(st.sampled_from([f for f in FIELDS if f not in ("seed", "payload")]))
        value = draw(st.sampled_from(["", "a\x00", "\x00"]) | st.integers(1, 300).map(lambda n: "x" * n))
        return Pairs([*((k, v) for k, v in pairs if k != name), (name, value)])
    if kind == "retype":  # the same number as a float, a bool, a string, another spelling
        name = draw(st.sampled_from(["seed", "scenario_id"]))
        number = dict(pairs).get(name)
        number = number if type(number) is int else 7
        value = draw(st.sampled_from([float(number), str(number), number == 1, Tok(f"{number}.0"), Tok(f"{number}e0"),
                                      Tok(f"{number}E+0"), Tok(f"-{number}"), number]))
        return Pairs([*((k, v) for k, v in pairs if k != name), (name, value)])
    if kind == "extra":
        return Pairs([*pairs, (draw(TEXT), draw(JSON))])
    if kind == "dup":
        other = (name, draw(SCALARS | JSON))
        return Pairs([other, *pairs] if draw(st.booleans()) else [*pairs, other])
    if kind == "escape":
        return Pairs((Key('"\\u%04x%s"' % (ord(k[0]), k[1:])) if k == name and k else k, v) for k, v in pairs)
    if kind == "ts":
        field = draw(st.sampled_from(["ts_utc", "emitted_at_utc"]))
        return Pairs([*((k, v) for k, v in pairs if k != field), (field, draw(TIMESTAMPS))])
    if kind == "schema":
        return Pairs([*((k, v) for k, v in pairs if k != "schema_version"), ("schema_version", draw(TEXT | st.none()))])
    if kind == "junk":
        return Pairs([*((k, v) for k, v in pairs if k != name), (name, draw(JUNK))])
    return Pairs([*((k, v) for k, v in pairs if k != "payload"), ("payload", draw(JSON))])


def outcome(classify: Any, source: SourceRef, raw: bytes, full_size: int | None = None) -> tuple[Any, ...]:
    """What a classifier did, compared with types (repr tells 1, 1.0 and True apart, and -0.0 from 0.0)."""
    try:
        verdict = classify(source, raw, full_size)
    except Exception as exc:  # the reference path's own failures must be the fast path's too
        return ("raised", type(exc), str(exc))
    return ("verdict", verdict, repr(verdict))


@settings(max_examples=300, deadline=None)
@given(rules=st.sampled_from(RULES), data=st.data())
def test_fast_path_gives_the_reference_verdict(rules: IntakeRules, data: st.DataObject) -> None:
    stream = data.draw(st.lists(records(rules.plane), min_size=1, max_size=12))
    fast = FastIntake(rules)
    for source, raw, full_size in stream:
        assert outcome(fast.classify, source, raw, full_size) == outcome(rules.classify, source, raw, full_size), raw


@settings(max_examples=150, deadline=None)
@given(rules=st.sampled_from(RULES[:4]), data=st.data())
def test_a_record_repeated_is_answered_alike_by_both_paths(rules: IntakeRules, data: st.DataObject) -> None:
    # Once its run is known the fast path answers it: every record again, in another order.
    stream = data.draw(st.lists(records(rules.plane), min_size=1, max_size=12))
    fast = FastIntake(rules)
    for source, raw, full_size in [*stream, *data.draw(st.permutations(stream))]:
        assert outcome(fast.classify, source, raw, full_size) == outcome(rules.classify, source, raw, full_size), raw


def _valid_variants() -> list[tuple[IntakeRules, str, dict[str, Any]]]:
    """Valid events in every shape the contract allows (and the runs they belong to)."""
    no_run_id = {k: v for k, v in PINS.items() if k != "run_id"}
    from_run_id = {k: v for k, v in PINS.items() if k != "scenario_run_id"}
    optional = {"trace_id": "t" * 128, "span_id": "s", "parent_event_id": "p" * 256, "emitted_at_utc": "2030-01-01T00:00:00.000000Z",
                "producer": "x" * 128, "schema_version": "v" * 64}
    join, features = RULES[0], RULES[2]
    return [
        (join, ARRIVAL[0], envelope(ARRIVAL[1], {"merchant_id": "m-1", "arrival_seq": 1})),
        (join, ARRIVAL[0], envelope(ARRIVAL[1], {"merchant_id": 7, "arrival_seq": "0042", "x": [1.5, None, {"é": 2**63}]}, ts_s=61.25)),
        (join, ENTITIES[0], envelope(ENTITIES[1], {"merchant_id": "m" * 256, "arrival_seq": 2**63 - 1}, **optional)),
        (join, ANCHOR_FRAUD[0], envelope(ANCHOR_FRAUD[1], {"merchant_id": "m-1", "arrival_seq": 1, "flow_id": 12}, ts_s=3600)),
        (join, ANCHOR_BASELINE[0], envelope(ANCHOR_BASELINE[1], {"merchant_id": "m-1", "arrival_seq": 3, "flow_id": "f" * 256},
                                            pins={**PINS, "scenario_id": 7})),
        (join, ARRIVAL[0], envelope(ARRIVAL[1], {"merchant_id": "m-1", "arrival_seq": 4}, pins=no_run_id, schema_version=None)),
        (join, ARRIVAL[0], envelope(ARRIVAL[1], {"merchant_id": "m-1", "arrival_seq": 5}, pins=from_run_id, producer=None)),
        (features, TRAFFIC_FRAUD[0], envelope(TRAFFIC_FRAUD[1], {"flow_id": "f-1", "amount": 12.5})),
        (features, TRAFFIC_BASELINE[0], envelope(TRAFFIC_BASELINE[1], {"flow_id": 9, "device_id": 3, "amount": "7.25"}, ts_s=86400)),
        (features, TRAFFIC_FRAUD[0], envelope(TRAFFIC_FRAUD[1], {"instrument_id": "i" * 257, "amount": 10**12}, **optional)),
        (features, TRAFFIC_FRAUD[0], envelope(TRAFFIC_FRAUD[1], {}, pins={**PINS, "seed": 0})),
    ]


def test_valid_events_are_answered_by_the_fast_path() -> None:
    # The equivalence above would hold trivially if the fast path never answered: it answers every
    # valid event of a run it knows (the first event of a run is the reference path's, and teaches it).
    for rules in (RULES[0], RULES[2]):
        variants = [(topic, env) for r, topic, env in _valid_variants() if r is rules]
        runs = {tuple(env.get(name) for name in (*PIN_FIELDS, "run_id")) for _, env in variants}
        fast = FastIntake(rules)
        for topic, env in variants * 2:
            source = SourceRef(topic, 0, "0", "file_line")
            line = msgspec.json.encode({"partition_key": "k", "payload": env, "published_at_utc": env["ts_utc"]})
            for raw in (line, msgspec.json.encode(env), msgspec.json.encode({"envelope": env})):
                verdict = fast.classify(source, raw)
                assert type(verdict) is Accepted and outcome(fast.classify, source, raw) == outcome(rules.classify, source, raw)
        assert fast.reference_verdicts == len(runs)


def _line(pairs: Any, partition_key: Any = "k", ascii_only: bool = True) -> bytes:
    record = Pairs([("partition_key", partition_key), ("payload", pairs)])
    return dumps(record, ascii_only).encode("utf-8", "surrogatepass")


def _with(env: dict[str, Any], **changes: Any) -> Pairs:
    return Pairs([*((k, v) for k, v in env.items() if k not in changes), *changes.items()])


_BASE = envelope(ARRIVAL[1], {"merchant_id": "m-1", "arrival_seq": 1})  # at 05:00:00
_INT_RUN = envelope(ARRIVAL[1], {"merchant_id": "m-1", "arrival_seq": 2}, pins={**PINS, "scenario_id": 7})
# One deviation from an event of a run (and a minute) the fast path knows: each is the reference
# path's to answer, by a rejection or a different accepted value.
NEAR_MISSES = {
    "leap second in a known minute": _line(_with(_BASE, ts_utc="2026-02-07T05:00:60.000000Z")),
    "seconds out of range": _line(_with(_BASE, ts_utc="2026-02-07T05:00:99.000000Z")),
    "a non-ASCII digit": _line(_with(_BASE, ts_utc="2026-02-07T05:00:0\u0661.000000Z")),
    "emitted_at_utc not a timestamp": _line(_with(_BASE, emitted_at_utc="2026-02-07T05:00:00Z")),
    "empty producer": _line(_with(_BASE, producer="")),
    "producer too long": _line(_with(_BASE, producer="x" * 129)),
    "NUL in trace_id": _line(_with(_BASE, trace_id="t\x00")),
    "span_id too long": _line(_with(_BASE, span_id="s" * 129)),
    "parent_event_id too long": _line(_with(_BASE, parent_event_id="p" * 257)),
    "schema_version too long": _line(_with(_BASE, schema_version="v" * 65)),
    "event_id too long": _line(_with(_BASE, event_id="e" * 257)),
    "NUL in event_id": _line(_with(_BASE, event_id="e\x00")),
    "seed as a float": _line(_with(_BASE, seed=42.0)),
    "seed spelled 42e0": _line(_with(_BASE, seed=Tok("42e0"))),
    "seed as a string": _line(_with(_BASE, seed="42")),
    "seed as a bool": _line(_with(_BASE, seed=True)),
    "scenario_id as a float": _line(_with(_INT_RUN, scenario_id=7.0)),
    "scenario_id as a string": _line(_with(_INT_RUN, scenario_id="7")),
    "scenario_id beyond 64 bits": _line(_with(_INT_RUN, scenario_id=2**64 + 7)),
    "another platform run": _line(_with(_BASE, platform_run_id=OTHER_RUN)),
    "another run_id": _line(_with(_BASE, run_id="c" * 32)),
    "no run_id": _line(_with(_BASE, run_id=None)),
    "partition key not UTF-8": _line(_BASE, partition_key="\ud800", ascii_only=False),
    "partition key a lone surrogate": _line(_BASE, partition_key="\ud800"),
    "partition key a number": _line(_BASE, partition_key=1),
    "an extra wrapper field": dumps(Pairs([("payload", _BASE), ("envelope", _BASE)]), True).encode(),
    "an extra top-level field": _line(_with(_BASE, extra=1)),
    "an escaped field name": _line(Pairs((Key('"\\u0065vent_id"') if k == "event_id" else k, v) for k, v in _BASE.items())),
    "event_id given twice, the last invalid": _line(Pairs([*_BASE.items(), ("event_id", "")])),
    "payload given twice": _line(Pairs([*_BASE.items(), ("payload", {"merchant_id": "m-2", "arrival_seq": 9})])),
    "payload integer beyond 64 bits": _line(_with(_BASE, payload={"merchant_id": "m-1", "arrival_seq": 1, "n": 2**64})),
    "payload number out of range": _line(_with(_BASE, payload={"merchant_id": "m-1", "arrival_seq": 1, "n": Tok("1e400")})),
    "payload not UTF-8": _line(_with(_BASE, payload={"merchant_id": "m-1", "arrival_seq": 1, "n": "\ud800"}), ascii_only=False),
    "payload nested 253 deep": _line(_with(_BASE, payload={"merchant_id": "m", "arrival_seq": 1, "n": Tok("[" * 252 + "]" * 252)})),
    "payload nested 254 deep (the reference path raises)":
        _line(_with(_BASE, payload={"merchant_id": "m", "arrival_seq": 1, "n": Tok("[" * 253 + "]" * 253)})),
    "payload a list": _line(_with(_BASE, payload=[1])),
    "arrival_seq beyond BIGINT": _line(_with(_BASE, payload={"merchant_id": "m-1", "arrival_seq": 2**63})),
    "merchant_id empty": _line(_with(_BASE, payload={"merchant_id": "", "arrival_seq": 1})),
    "an anchor without flow_id": _line(envelope(ANCHOR_FRAUD[1], {"merchant_id": "m-1", "arrival_seq": 1})),
    "an event type of the other plane": _line(envelope(TRAFFIC_FRAUD[1], {"flow_id": "f"})),
    "trailing junk": _line(_BASE) + b" x",
}


@pytest.mark.parametrize("raw", NEAR_MISSES.values(), ids=NEAR_MISSES.keys())
def test_near_misses_of_a_known_run_are_the_reference_paths(raw: bytes) -> None:
    rules = RULES[0]
    fast = FastIntake(rules)
    source = SourceRef(ARRIVAL[0], 0, "0", "file_line")
    for known in (_BASE, _INT_RUN, _BASE):
        assert type(fast.classify(source, _line(known))) is Accepted
    assert fast.fast_verdicts == 1  # the run and the minute are known
    assert outcome(fast.classify, source, raw) == outcome(rules.classify, source, raw)


@pytest.mark.parametrize("full_size", [None, len(_line(_BASE)), len(_line(_BASE)) + 1, 2 * MAX_RECORD_BYTES])
def test_a_record_the_bus_cut_short_is_the_reference_paths(full_size: int | None) -> None:
    # A valid line whose bus says it was longer (only its start was read): never the fast path's.
    rules = RULES[0]
    fast = FastIntake(rules)
    source = SourceRef(ARRIVAL[0], 0, "0", "file_line")
    fast.classify(source, _line(_BASE))
    assert outcome(fast.classify, source, _line(_BASE), full_size) == outcome(rules.classify, source, _line(_BASE), full_size)
    assert fast.fast_verdicts == (1 if full_size in (None, len(_line(_BASE))) else 0)


def test_a_known_run_on_a_topic_not_allowed_is_the_reference_paths() -> None:
    rules = RULES[0]
    fast = FastIntake(rules)
    for topic in (ARRIVAL[0], ARRIVAL[0], TRAFFIC_FRAUD[0], "fp.bus.other"):
        source = SourceRef(topic, 0, "0", "file_line")
        assert outcome(fast.classify, source, _line(_BASE)) == outcome(rules.classify, source, _line(_BASE))
    assert fast.fast_verdicts == 1


def test_the_decoder_knows_exactly_the_envelope_fields() -> None:
    fields = _Envelope.__struct_fields__
    required = fields[: len(fields) - len(_Envelope.__struct_defaults__)]
    assert set(fields) == set(Envelope.model_fields)
    assert set(_RUN_FIELDS) == {*PIN_FIELDS, "run_id"}
    assert set(required) == {name for name, field in Envelope.model_fields.items() if field.is_required()}
