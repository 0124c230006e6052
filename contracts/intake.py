"""Intake: one raw bus record in, exactly one verdict out — accepted, rejected (with a reason) or ignored.

Pure and synchronous (sans-I/O): the partition actor calls :meth:`IntakeRules.classify` per record
and forwards the verdicts to the store-writer. The checks run in the order of docs/events.md §The order of the checks and
the first failure wins. Nothing here raises on bad input: junk bytes are a :class:`Rejected`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from ctxplane.contracts.canonical import canonical_json, sha256_hex
from ctxplane.contracts.classes import (
    ANCHOR_EVENT_TYPES,
    EVENT_CLASS_BY_TYPE,
    IGNORED_EVENT_TYPES,
    PLANE_BY_CLASS,
    ROLE_BY_CLASS,
    Plane,
)
from ctxplane.contracts.envelope import PIN_FIELDS, envelope_error
from ctxplane.contracts.limits import is_sql_text, sequence_number
from ctxplane.contracts.reasons import Reason
from ctxplane.contracts.timestamps import parse_ts_us

__all__ = (
    "MAX_RECORD_BYTES",
    "Accepted",
    "Ignored",
    "IntakeRules",
    "Rejected",
    "SourceRef",
    "Verdict",
    "extract_envelope",
    "payload_hash",
    "pins_id",
)

# A record larger than this is rejected unparsed: no legitimate envelope comes close, and parsing a
# huge line would stall the partition actor.
MAX_RECORD_BYTES = 1024 * 1024
_SNIPPET = 120


@dataclass(frozen=True, slots=True)
class SourceRef:
    """Where a record sat on the bus."""

    topic: str
    partition: int
    offset: str
    offset_kind: str


@dataclass(frozen=True, slots=True)
class Accepted:
    """A valid event for a plane, decoded once; everything the store-writer needs."""

    plane: Plane
    source: SourceRef
    event_id: str
    event_type: str
    event_class: str
    ts_utc: str
    ts_us: int
    platform_run_id: str
    scenario_run_id: str
    pins: dict[str, Any]
    pins_id: str
    payload: dict[str, Any]
    payload_hash: str
    # Join plane.
    role: str | None = None
    merchant_id: str | None = None
    arrival_seq: int | None = None
    flow_id: str | None = None
    # Feature plane: (key_type, key_id) pairs present in the payload, and the amount (micro-units).
    feature_keys: tuple[tuple[str, str], ...] = ()
    amount_units: int | None = None
    # Set by the partition actor: older than its watermark minus the allowed lateness.
    late: bool = False
    watermark_us: int | None = None


@dataclass(frozen=True, slots=True)
class Rejected:
    """A record that fails intake: becomes one ledger row; the checkpoint moves past it."""

    source: SourceRef
    reason: Reason
    details: dict[str, Any]
    event_id: str | None = None
    event_type: str | None = None
    platform_run_id: str | None = None
    scenario_run_id: str | None = None


@dataclass(frozen=True, slots=True)
class Ignored:
    """A decision output sharing a traffic topic: not an input of either plane; counted only."""

    source: SourceRef
    event_type: str


Verdict = Accepted | Rejected | Ignored


def payload_hash(event_type: str, schema_version: object, payload: object) -> str:
    """SHA-256 of canonical ``{event_type, schema_version, payload}`` (envelope timestamps excluded)."""
    return sha256_hex(
        canonical_json({"event_type": event_type, "schema_version": schema_version, "payload": payload})
    )


def pins_id(pins: Mapping[str, Any]) -> str:
    """Identity of a pins set: the first 32 hex chars of the SHA-256 of its canonical JSON."""
    return sha256_hex(canonical_json(dict(pins)))[:32]


def extract_envelope(record: object) -> dict[str, Any] | None:
    """Find the envelope in a decoded bus record.

    Accepts the file-bus wrapper ``{"partition_key", "payload": <envelope>, ...}``, the origin's
    ``{"envelope": <envelope>}``, and a bare envelope. Returns ``None`` when there is none.
    """
    if not isinstance(record, dict):
        return None
    inner = record.get("envelope")
    if isinstance(inner, dict):
        return inner
    inner = record.get("payload")
    if "event_id" not in record and isinstance(inner, dict) and ("event_id" in inner or "event_type" in inner):
        return inner
    if "event_id" in record or "event_type" in record:
        return record
    return None


def _snippet(raw: bytes) -> str:
    return raw[:_SNIPPET].decode("utf-8", errors="replace")


@dataclass(slots=True)
class IntakeRules:
    """The intake checks of one plane, compiled once per partition actor.

    Attributes:
        plane: the plane this consumer feeds.
        allowed_topics: the plane's topic allow-list.
        required_run: when set, events of any other ``platform_run_id`` are RUN_SCOPE_MISMATCH.
        replay_pins: during a replay, pins every event must match (None outside replays).
        feature_key_types: payload fields that key feature state (feature plane only).
        parse_amount: turns a payload ``amount`` into integer micro-units, or None.
    """

    plane: Plane
    allowed_topics: frozenset[str]
    required_run: str | None = None
    replay_pins: Mapping[str, Any] | None = None
    feature_key_types: tuple[str, ...] = ()
    parse_amount: Callable[[object], int | None] | None = None
    _pins_ids: dict[tuple[Any, ...], tuple[dict[str, Any], str]] = field(default_factory=dict)

    def classify_many(self, records: Iterable[tuple[SourceRef, bytes]]) -> list[Verdict]:
        return [self.classify(source, raw) for source, raw in records]

    def classify(self, source: SourceRef, raw: bytes, full_size: int | None = None) -> Verdict:
        """Decide what one raw record is. Never raises on bad input.

        ``full_size``: the record's length when ``raw`` is only its first bytes (a bus adapter
        bounds what it reads of an oversized record; ``BusRecord.full_size``).
        """
        # Step 1: bytes -> envelope.
        size = len(raw) if full_size is None else full_size
        if size > MAX_RECORD_BYTES:
            return Rejected(source, Reason.ENVELOPE_MISSING, {"error": f"record of {size} bytes exceeds {MAX_RECORD_BYTES}"})
        try:
            record = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return Rejected(source, Reason.ENVELOPE_MISSING, {"error": f"not valid UTF-8 JSON: {exc}", "snippet": _snippet(raw)})
        envelope = extract_envelope(record)
        if envelope is None:
            kind = type(record).__name__
            return Rejected(source, Reason.ENVELOPE_MISSING, {"error": f"no envelope in a JSON {kind}", "snippet": _snippet(raw)})
        # Only text a TEXT column holds goes into the ledger row: a NUL in an invalid event_id
        # would make PostgreSQL refuse the ledger insert, and with it the whole group commit.
        event_id = envelope.get("event_id") if _ledger_text(envelope.get("event_id")) else None
        event_type = envelope.get("event_type") if _ledger_text(envelope.get("event_type")) else None
        problem = envelope_error(envelope)
        if problem is not None:
            return Rejected(source, Reason.ENVELOPE_INVALID, {"error": problem, "event_type": event_type}, event_id, event_type)
        assert event_id is not None and event_type is not None
        platform_run_id = envelope.get("platform_run_id")
        scenario_run_id = envelope.get("scenario_run_id") or envelope.get("run_id")

        def reject(reason: Reason, details: dict[str, Any]) -> Rejected:
            return Rejected(source, reason, details, event_id, event_type, platform_run_id, scenario_run_id)

        # Step 2: scope checks.
        if self.replay_pins is not None:
            mismatches = {
                name: {"expected": expected, "actual": envelope.get(name)}
                for name, expected in self.replay_pins.items()
                if expected is not None and str(envelope.get(name)) != str(expected)
            }
            if mismatches:
                return reject(Reason.REPLAY_PINS_MISMATCH, {"mismatches": mismatches})
        if source.topic not in self.allowed_topics:
            return reject(Reason.TOPIC_NOT_ALLOWED, {"topic": source.topic})
        if event_type in IGNORED_EVENT_TYPES and self.plane is Plane.FEATURES:
            return Ignored(source, event_type)
        event_class = EVENT_CLASS_BY_TYPE.get(event_type)
        if event_class is None or PLANE_BY_CLASS[event_class] is not self.plane:
            return reject(Reason.EVENT_CLASS_UNSUPPORTED, {"event_class": event_class, "event_type": event_type})
        pins_values = {name: envelope.get(name) for name in PIN_FIELDS}
        pins_values["scenario_run_id"] = scenario_run_id
        missing = [name for name, value in pins_values.items() if value is None and name != "platform_run_id"]
        if missing:
            return reject(Reason.REQUIRED_PINS_MISSING, {"missing": missing})
        if platform_run_id is None:
            return reject(Reason.PLATFORM_RUN_ID_MISSING, {})
        if self.required_run is not None and platform_run_id != self.required_run:
            return reject(Reason.RUN_SCOPE_MISMATCH, {"expected": self.required_run, "actual": platform_run_id})
        payload = envelope.get("payload")
        if not isinstance(payload, dict):
            return reject(Reason.PAYLOAD_INVALID, {"error": "payload must be an object"})

        # Step 3: plane-specific keys.
        run_id = envelope.get("run_id")
        pins, pid = self._pins(pins_values, run_id)
        try:
            hashed = payload_hash(event_type, envelope.get("schema_version"), payload)
        except TypeError as exc:  # JSON it decoded but canonical JSON cannot carry (nesting beyond 255 levels)
            return reject(Reason.PAYLOAD_INVALID, {"error": f"payload cannot be encoded canonically: {exc}"})
        common = {
            "plane": self.plane,
            "source": source,
            "event_id": event_id,
            "event_type": event_type,
            "event_class": event_class,
            "ts_utc": envelope["ts_utc"],
            "ts_us": 0,
            "platform_run_id": platform_run_id,
            "scenario_run_id": scenario_run_id,
            "pins": pins,
            "pins_id": pid,
            "payload": payload,
            "payload_hash": hashed,
        }
        try:
            common["ts_us"] = parse_ts_us(envelope["ts_utc"])
        except ValueError:
            return reject(Reason.ENVELOPE_INVALID, {"error": "ts_utc is not a real instant", "event_type": event_type})
        if self.plane is Plane.JOIN:
            return self._join(common, payload, reject)
        return self._features(common, payload)

    def _pins(self, values: dict[str, Any], run_id: object) -> tuple[dict[str, Any], str]:
        cache_key = (*values.values(), run_id)
        cached = self._pins_ids.get(cache_key)
        if cached is None:
            pins = {name: (str(value) if name == "scenario_id" else value) for name, value in values.items()}
            if run_id is not None:
                pins["run_id"] = run_id
            if len(self._pins_ids) > 1024:  # bounded: a run has a handful of pins sets
                self._pins_ids.clear()
            cached = self._pins_ids[cache_key] = (pins, pins_id(pins))
        return cached

    @staticmethod
    def _join(common: dict[str, Any], payload: dict[str, Any], reject: Callable[[Reason, dict[str, Any]], Rejected]) -> Verdict:
        # PAYLOAD_INVALID before JOIN_KEY_MISSING (docs/events.md §The order of the checks): an integer arrival_seq
        # beyond the BIGINT column is not a missing key but a value no store can hold.
        try:
            arrival_seq = sequence_number(payload.get("arrival_seq"))
        except ValueError as exc:
            return reject(Reason.PAYLOAD_INVALID, {"field": "arrival_seq", "error": f"arrival_seq: {exc}"})
        merchant_id = payload.get("merchant_id")
        if type(merchant_id) is int:
            merchant_id = str(merchant_id)
        if not is_sql_text(merchant_id, 256):
            return reject(Reason.JOIN_KEY_MISSING, {"missing": "merchant_id"})
        if arrival_seq is None:
            return reject(Reason.JOIN_KEY_MISSING, {"missing": "arrival_seq"})
        flow_id = None
        if common["event_type"] in ANCHOR_EVENT_TYPES:
            flow_id = payload.get("flow_id")
            if type(flow_id) is int:
                flow_id = str(flow_id)
            if not is_sql_text(flow_id, 256):
                return reject(Reason.FLOW_ID_MISSING, {})
        role = ROLE_BY_CLASS[common["event_class"]]
        return Accepted(**common, role=role.value, merchant_id=merchant_id, arrival_seq=arrival_seq, flow_id=flow_id)

    def _features(self, common: dict[str, Any], payload: dict[str, Any]) -> Verdict:
        keys = []
        for key_type in self.feature_key_types:
            value = payload.get(key_type)
            if type(value) is int:
                value = str(value)
            if is_sql_text(value, 256):
                keys.append((key_type, value))
        amount = self.parse_amount(payload.get("amount")) if self.parse_amount is not None else None
        return Accepted(**common, feature_keys=tuple(keys), amount_units=amount)


def _ledger_text(value: object) -> bool:
    return type(value) is str and "\x00" not in value
