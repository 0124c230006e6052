"""The fast intake path: the verdict of :meth:`IntakeRules.classify` for a valid event, in a few µs.

:meth:`IntakeRules.classify` stays the definition of intake (the reference path). :class:`FastIntake`
answers the common case — a valid event of a run it has seen — without building a dict per
envelope or re-checking what repeats on every event of a run:

- a precompiled msgspec decoder reads the record into a typed struct (shape, required fields,
  no extra top-level keys, types), leaving the event payload as raw bytes;
- orjson decodes the payload, exactly as the reference path does, so the accepted payload (and so
  its hash) is the same value: orjson reads an integer beyond 64 bits as a float, msgspec would not;
- the run identity (the pins fields) is checked once, by the reference path, and remembered; so is
  each minute's timestamp arithmetic;
- the payload hash is :func:`payload_hash` itself (one canonical encoding, as before).

Whenever it is not sure — the record does not decode, a value fails a check, a run identity not
yet seen accepted — the record goes to the reference path, so every rejection (reason, details,
ledger row) and every accepted field is the reference path's. ``tests/contracts/test_intake_fast.py``
checks the two agree on valid, mutated and junk records.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import orjson

from ctxplane.contracts.classes import ANCHOR_EVENT_TYPES, EVENT_CLASS_BY_TYPE, PLANE_BY_CLASS, ROLE_BY_CLASS, Plane
from ctxplane.contracts.envelope import field_check
from ctxplane.contracts.intake import MAX_RECORD_BYTES, Accepted, IntakeRules, SourceRef, Verdict, payload_hash
from ctxplane.contracts.limits import is_sql_text, sequence_number
from ctxplane.contracts.timestamps import TS_PATTERN, US_PER_SECOND, parse_ts_us

__all__ = ("FastIntake",)

# The fields that name a run (the pins and run_id): equal on every event of it, so checked once.
_RUN_FIELDS = ("manifest_fingerprint", "parameter_hash", "seed", "scenario_id", "run_id", "platform_run_id",
               "scenario_run_id")
# Checked on every event (the run fields, event_type and ts_utc have their own steps).
_PER_EVENT_CHECKS = tuple(
    (name, field_check(name))
    for name in ("event_id", "schema_version", "trace_id", "span_id", "parent_event_id", "producer")
)
_EMITTED_OK = field_check("emitted_at_utc")
# Bounded memories: a run has a handful of identities, a stream a few minutes at a time.
_MAX_REMEMBERED = 1024
_NULL = msgspec.Raw(b"null")


# gc=False: these structs hold only strings, ints and bytes, never a cycle; untracked, they cost the
# garbage collector nothing.
class _Envelope(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """The canonical envelope's shape (docs/events.md §The envelope): types here, formats after decoding."""

    event_id: str
    event_type: str
    ts_utc: str
    manifest_fingerprint: str
    parameter_hash: str | None = None
    seed: int | None = None
    scenario_id: str | int | None = None
    run_id: str | None = None
    platform_run_id: str | None = None
    scenario_run_id: str | None = None
    emitted_at_utc: str | None = None
    schema_version: str | None = None
    trace_id: str | None = None
    span_id: str | None = None
    parent_event_id: str | None = None
    producer: str | None = None
    # Raw: decoded by orjson, as in the reference path (see the module docstring).
    payload: msgspec.Raw = _NULL


class _FileBusLine(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """The file bus's wrapper around an envelope (runtime/bus/file/layout.py)."""

    payload: _Envelope
    partition_key: str | None = None
    published_at_utc: str | None = None


class _OriginRecord(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """The origin platform's ``{"envelope": <envelope>}``."""

    envelope: _Envelope


_FILE_BUS_LINE = msgspec.json.Decoder(_FileBusLine)
_ORIGIN_RECORD = msgspec.json.Decoder(_OriginRecord)


def _file_bus_line(raw: bytes) -> _Envelope:
    return _FILE_BUS_LINE.decode(raw).payload


def _origin_record(raw: bytes) -> _Envelope:
    return _ORIGIN_RECORD.decode(raw).envelope


# At most one of these succeeds on a record (each knows only its own top-level keys), and it finds
# the envelope extract_envelope finds. The file bus writes wrapped lines, Kinesis bare envelopes.
_Reader = Callable[[bytes], _Envelope]
_READERS: tuple[_Reader, ...] = (_file_bus_line, msgspec.json.Decoder(_Envelope).decode, _origin_record)
_DECODE_ERRORS = (msgspec.MsgspecError, RecursionError)


def _run_key(env: _Envelope) -> tuple[Any, ...]:
    # msgspec gives only str or int here (never bool or float), so value equality is type equality.
    return (env.manifest_fingerprint, env.parameter_hash, env.seed, env.scenario_id, env.run_id,
            env.platform_run_id, env.scenario_run_id)


class FastIntake:
    """:meth:`IntakeRules.classify` of ``rules`` (which must not change after), fast for valid events.

    One per partition actor: it remembers what it learns, and is not thread-safe.
    """

    def __init__(self, rules: IntakeRules) -> None:
        self._rules = rules
        self._slow = rules.classify
        # The replay-pins check is a function of the run fields only when it names nothing else.
        replay = rules.replay_pins or {}
        self._enabled = set(replay) <= set(_RUN_FIELDS)
        # The plane's event types: (event_class, role, is an anchor).
        self._types = {
            event_type: (event_class, ROLE_BY_CLASS[event_class].value if rules.plane is Plane.JOIN else None,
                         event_type in ANCHOR_EVENT_TYPES)
            for event_type, event_class in EVENT_CLASS_BY_TYPE.items()
            if PLANE_BY_CLASS[event_class] is rules.plane
        }
        self._readers = _READERS
        # Run fields -> (pins, pins_id, platform_run_id, scenario_run_id), learned from accepted verdicts.
        self._runs: dict[tuple[Any, ...], tuple[dict[str, Any], str, str, str]] = {}
        # "YYYY-MM-DDTHH:MM" -> its microseconds since the epoch (minutes that exist only).
        self._minutes: dict[str, int] = {}
        # How many verdicts each path gave (the fast one should give nearly all on clean traffic).
        self.fast_verdicts = 0
        self.reference_verdicts = 0

    def classify(self, source: SourceRef, raw: bytes, full_size: int | None = None) -> Verdict:
        """The verdict :meth:`IntakeRules.classify` gives, for any record (``full_size`` as there)."""
        # Only the start of a record the bus cut short (full_size beyond raw) is the reference path's.
        whole = full_size is None or full_size == len(raw)
        env = self._decode(raw) if self._enabled and whole else None
        run = self._runs.get(_run_key(env)) if env is not None else None
        if run is not None:
            accepted = self._accept(source, env, run)  # type: ignore[arg-type]
            if accepted is not None:
                self.fast_verdicts += 1
                return accepted
        self.reference_verdicts += 1
        verdict = self._slow(source, raw, full_size)
        if run is None and env is not None and type(verdict) is Accepted:
            self._learn(_run_key(env), verdict)
        return verdict

    def _decode(self, raw: bytes) -> _Envelope | None:
        if len(raw) > MAX_RECORD_BYTES:
            return None
        for index, read in enumerate(self._readers):
            try:
                env = read(raw)
            except _DECODE_ERRORS:
                continue
            if index:  # a partition's records come in one form: try it first from now on
                self._readers = (read, *self._readers[:index], *self._readers[index + 1:])
            return env
        return None

    def _learn(self, key: tuple[Any, ...], verdict: Accepted) -> None:
        if len(self._runs) >= _MAX_REMEMBERED:
            self._runs.clear()
        self._runs[key] = (verdict.pins, verdict.pins_id, verdict.platform_run_id, verdict.scenario_run_id)

    def _accept(self, source: SourceRef, env: _Envelope, run: tuple[dict[str, Any], str, str, str]) -> Accepted | None:
        """The Accepted verdict when every check passes, else None (the reference path decides)."""
        rules = self._rules
        event_type = env.event_type
        known = self._types.get(event_type)
        if known is None or source.topic not in rules.allowed_topics:
            return None
        for name, check in _PER_EVENT_CHECKS:
            value = getattr(env, name)
            if value is not None and not check(value):
                return None
        ts_utc = env.ts_utc
        emitted = env.emitted_at_utc
        if emitted is not None and emitted != ts_utc and not _EMITTED_OK(emitted):
            return None
        ts_us = self._ts_us(ts_utc)
        if ts_us is None:
            return None
        try:
            payload = orjson.loads(memoryview(env.payload))
        except orjson.JSONDecodeError:
            return None
        if type(payload) is not dict:
            return None
        try:
            # The reference path's own function: the same bytes hashed, and the same failure (a
            # payload nested too deep for orjson raises there, so it must be the reference's to raise).
            hashed = payload_hash(event_type, env.schema_version, payload)
        except orjson.JSONEncodeError:
            return None
        event_class, role, anchor = known
        pins, pins_id, platform_run_id, scenario_run_id = run
        if rules.plane is Plane.JOIN:
            keys = _join_keys(payload, anchor)
            if keys is None:
                return None
            merchant_id, arrival_seq, flow_id = keys
            return Accepted(rules.plane, source, env.event_id, event_type, event_class, ts_utc, ts_us, platform_run_id,
                            scenario_run_id, pins, pins_id, payload, hashed,
                            role=role, merchant_id=merchant_id, arrival_seq=arrival_seq, flow_id=flow_id)
        feature_keys = []
        for key_type in rules.feature_key_types:
            value = payload.get(key_type)
            if type(value) is int:
                value = str(value)
            if is_sql_text(value, 256):
                feature_keys.append((key_type, value))
        amount = rules.parse_amount(payload.get("amount")) if rules.parse_amount is not None else None
        return Accepted(rules.plane, source, env.event_id, event_type, event_class, ts_utc, ts_us, platform_run_id,
                        scenario_run_id, pins, pins_id, payload, hashed,
                        feature_keys=tuple(feature_keys), amount_units=amount)

    def _ts_us(self, ts_utc: str) -> int | None:
        """parse_ts_us, with the minute remembered: a stream's events share a few minutes at a time."""
        if TS_PATTERN.fullmatch(ts_utc) is None:
            return None
        minute = self._minutes.get(ts_utc[:16])
        if minute is None:
            try:
                ts_us = parse_ts_us(ts_utc)
            except ValueError:
                return None
            if len(self._minutes) >= _MAX_REMEMBERED:
                self._minutes.clear()
            self._minutes[ts_utc[:16]] = ts_us - int(ts_utc[17:19] + ts_utc[20:26])
            return ts_us
        # The pattern matched, so these are ASCII digits: SS and ffffff. A leap second is refused.
        seconds_us = int(ts_utc[17:19] + ts_utc[20:26])
        return minute + seconds_us if seconds_us < 60 * US_PER_SECOND else None


def _join_keys(payload: dict[str, Any], anchor: bool) -> tuple[str, int, str | None] | None:
    """(merchant_id, arrival_seq, flow_id) as IntakeRules._join accepts them, else None."""
    try:
        arrival_seq = sequence_number(payload.get("arrival_seq"))
    except ValueError:
        return None
    merchant_id = payload.get("merchant_id")
    if type(merchant_id) is int:
        merchant_id = str(merchant_id)
    if arrival_seq is None or not is_sql_text(merchant_id, 256):
        return None
    if not anchor:
        return merchant_id, arrival_seq, None
    flow_id = payload.get("flow_id")
    if type(flow_id) is int:
        flow_id = str(flow_id)
    if not is_sql_text(flow_id, 256):
        return None
    return merchant_id, arrival_seq, flow_id
