"""The canonical event envelope and ContextPins (docs/events.md §The envelope).

Two views of the same schema: :class:`Envelope` (pydantic, for clients, generators and docs) and
:func:`envelope_error` (hand-checked, for the ingest hot path). A property test keeps them in
agreement; the hot path never builds a model per event.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from ctxplane.contracts.answers import ErrorCode
from ctxplane.contracts.limits import is_sql_text
from ctxplane.contracts.timestamps import TS_PATTERN

__all__ = (
    "PIN_FIELDS",
    "PIN_FORMATS",
    "PINS_HINT",
    "ContextPins",
    "Envelope",
    "OPTIONAL_PINS",
    "PinsProblems",
    "envelope_error",
    "field_check",
    "pins_error",
    "pins_mismatch",
    "pins_problem",
    "pins_problems",
)

_HEX64 = re.compile(r"^[a-f0-9]{64}$")
_HEX32 = re.compile(r"^[a-f0-9]{32}$")
_PLATFORM_RUN = re.compile(r"^platform_[0-9]{8}T[0-9]{6}Z$")
_SEED_MAX = 2**64 - 1

# The six ContextPins every stored row and every query carries; run_id is an optional legacy alias.
PIN_FIELDS: tuple[str, ...] = (
    "platform_run_id",
    "scenario_run_id",
    "manifest_fingerprint",
    "parameter_hash",
    "scenario_id",
    "seed",
)
# Pins the protocol declares optional: a request may omit them, and then they are not compared.
OPTIONAL_PINS: tuple[str, ...] = ("run_id",)

Hex64 = Annotated[StrictStr, Field(pattern=_HEX64.pattern)]
Hex32 = Annotated[StrictStr, Field(pattern=_HEX32.pattern)]
Timestamp = Annotated[StrictStr, Field(pattern="^" + TS_PATTERN.pattern + "$")]
PlatformRunId = Annotated[StrictStr, Field(pattern=_PLATFORM_RUN.pattern)]
Seed = Annotated[StrictInt, Field(ge=0, le=_SEED_MAX)]


def _text(max_len: int) -> Any:
    # No U+0000: PostgreSQL TEXT cannot hold it (contracts/limits.py).
    return Annotated[StrictStr, Field(min_length=1, max_length=max_len, pattern=r"^[^\x00]*$")]


class Envelope(BaseModel):
    """The canonical envelope: no extra top-level keys; ``payload`` is opaque."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: _text(256)  # type: ignore[valid-type]
    event_type: _text(256)  # type: ignore[valid-type]
    ts_utc: Timestamp
    manifest_fingerprint: Hex64
    parameter_hash: Hex64 | None = None
    seed: Seed | None = None
    scenario_id: _text(256) | Annotated[StrictInt, Field(ge=0)] | None = None  # type: ignore[valid-type]
    run_id: Hex32 | None = None
    platform_run_id: PlatformRunId | None = None
    scenario_run_id: Hex32 | None = None
    emitted_at_utc: Timestamp | None = None
    schema_version: _text(64) | None = None  # type: ignore[valid-type]
    trace_id: _text(128) | None = None  # type: ignore[valid-type]
    span_id: _text(128) | None = None  # type: ignore[valid-type]
    parent_event_id: _text(256) | None = None  # type: ignore[valid-type]
    producer: _text(128) | None = None  # type: ignore[valid-type]
    payload: dict[str, Any] | None = None


class ContextPins(BaseModel):
    """The pins a query presents and every stored row carries (the six + optional run_id)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    platform_run_id: PlatformRunId
    scenario_run_id: Hex32
    manifest_fingerprint: Hex64
    parameter_hash: Hex64
    scenario_id: _text(256)  # type: ignore[valid-type]
    seed: Seed
    run_id: Hex32 | None = None


_is_text = is_sql_text


def _is_seed(value: object) -> bool:
    return type(value) is int and 0 <= value <= _SEED_MAX


# field -> (required, check). Decided once; envelope_error walks this table per event.
_CHECKS: dict[str, tuple[bool, Callable[[Any], bool]]] = {
    "event_id": (True, lambda v: _is_text(v, 256)),
    "event_type": (True, lambda v: _is_text(v, 256)),
    "ts_utc": (True, lambda v: type(v) is str and TS_PATTERN.fullmatch(v) is not None),
    "manifest_fingerprint": (True, lambda v: type(v) is str and _HEX64.match(v) is not None),
    "parameter_hash": (False, lambda v: type(v) is str and _HEX64.match(v) is not None),
    "seed": (False, _is_seed),
    "scenario_id": (False, lambda v: _is_text(v, 256) or (type(v) is int and v >= 0)),
    "run_id": (False, lambda v: type(v) is str and _HEX32.match(v) is not None),
    "platform_run_id": (False, lambda v: type(v) is str and _PLATFORM_RUN.match(v) is not None),
    "scenario_run_id": (False, lambda v: type(v) is str and _HEX32.match(v) is not None),
    "emitted_at_utc": (False, lambda v: type(v) is str and TS_PATTERN.fullmatch(v) is not None),
    "schema_version": (False, lambda v: _is_text(v, 64)),
    "trace_id": (False, lambda v: _is_text(v, 128)),
    "span_id": (False, lambda v: _is_text(v, 128)),
    "parent_event_id": (False, lambda v: _is_text(v, 256)),
    "producer": (False, lambda v: _is_text(v, 128)),
    "payload": (False, lambda v: type(v) is dict),
}
_REQUIRED = tuple(name for name, (required, _) in _CHECKS.items() if required)
_REQUIRED_SET = frozenset(_REQUIRED)
_ALLOWED = frozenset(_CHECKS)
# The run-identity fields repeat on every event of a run: once a combination is known valid, it is
# not re-checked field by field (a bounded cache; a run has a handful of combinations).
_PIN_GROUP = ("manifest_fingerprint", "parameter_hash", "seed", "scenario_id", "run_id", "platform_run_id",
              "scenario_run_id")
_PER_EVENT = tuple(name for name in _CHECKS if name not in _PIN_GROUP)
_valid_pin_groups: set[tuple[Any, ...]] = set()


def envelope_error(envelope: dict[str, Any]) -> str | None:
    """Return ``None`` if ``envelope`` is a valid canonical envelope, else a short reason.

    ``null`` for an optional field counts as absent, as in :class:`Envelope`.
    """
    keys = envelope.keys()
    if not _REQUIRED_SET <= keys:
        for name in _REQUIRED:
            if name not in envelope:
                return f"missing required field {name}"
    if not keys <= _ALLOWED:
        for name in envelope:
            if name not in _ALLOWED:
                return f"unexpected top-level field {name}"
    # Types are part of the key: True == 1 and 1.0 == 1 in Python, but only the int is a valid seed.
    group = tuple((type(v), v) for v in map(envelope.get, _PIN_GROUP))
    hashable = all(t is not dict and t is not list for t, _ in group)
    known = hashable and group in _valid_pin_groups
    for name in _PER_EVENT if known else _CHECKS:
        if name not in envelope:
            continue
        value = envelope[name]
        required, check = _CHECKS[name]
        if value is None and not required:
            continue
        if not check(value):
            return f"invalid {name}"
    if not known and hashable and len(_valid_pin_groups) < 1024:
        _valid_pin_groups.add(group)
    return None


# What each pin must look like, said in the detail of an answer that refuses it.
PIN_FORMATS: dict[str, str] = {
    "platform_run_id": "platform_YYYYMMDDTHHMMSSZ",
    "scenario_run_id": "32 lowercase hex characters",
    "manifest_fingerprint": "64 lowercase hex characters",
    "parameter_hash": "64 lowercase hex characters",
    "scenario_id": "a string of 1..256 characters",
    "seed": "an integer 0..2^64-1",
    "run_id": "32 lowercase hex characters, optional",
}
_PIN_NAMES = (*PIN_FIELDS, "run_id")
# Where a client finds the pins of a run it did not write (actors/app/cli.py, ``ctxplane runs``).
PINS_HINT = "`ctxplane runs` lists the pins of the runs the store holds"


@dataclass(frozen=True, slots=True)
class PinsProblems:
    """Everything wrong with a request's pins, found in one pass (so a client fixes them at once).

    ``missing``: required pins absent or null, in :data:`PIN_FIELDS` order; ``invalid``: present with
    a wrong type or format; ``unknown``: fields that are not pins. ``not_object``: ``pins`` is absent
    or not an object (then every required pin counts as missing).
    """

    missing: tuple[str, ...] = ()
    invalid: tuple[str, ...] = ()
    unknown: tuple[str, ...] = ()
    not_object: bool = False

    def __bool__(self) -> bool:
        return bool(self.missing or self.invalid or self.unknown or self.not_object)

    def detail(self) -> str:
        """One line naming every problem, e.g. ``pins.seed, pins.parameter_hash are required; ...``."""
        if self.not_object:
            return f"pins must be an object with {', '.join(PIN_FIELDS)} (and optionally run_id); {PINS_HINT}"
        parts: list[str] = []
        if self.missing:
            names = ", ".join(f"pins.{name}" for name in self.missing)
            parts.append(f"{names} {'is' if len(self.missing) == 1 else 'are'} required")
        for name in self.invalid:
            parts.append(f"pins.{name} is invalid (expected {PIN_FORMATS[name]})")
        if self.unknown:
            names = ", ".join(f"pins.{name}" for name in self.unknown)
            verb = "is not a pin" if len(self.unknown) == 1 else "are not pins"
            parts.append(f"{names} {verb} (pins: {', '.join(_PIN_NAMES)})")
        detail = "; ".join(parts)
        return f"{detail}; {PINS_HINT}" if self.missing else detail


def pins_problems(pins: object) -> PinsProblems:
    """Check request pins: the six required, each format, no other field. Empty when valid."""
    if not isinstance(pins, dict):
        return PinsProblems(missing=PIN_FIELDS, not_object=True)
    missing = tuple(name for name in PIN_FIELDS if pins.get(name) is None)
    invalid: list[str] = []
    unknown: list[str] = []
    for name, value in pins.items():
        if name not in _PIN_NAMES:
            unknown.append(str(name))
        elif value is None:
            continue  # missing (a required pin) or absent (run_id)
        elif name == "scenario_id" and type(value) is int:
            invalid.append(name)  # events may carry an integer scenario_id; requests name the stored string
        elif not _CHECKS[name][1](value):
            invalid.append(name)
    return PinsProblems(missing, tuple(invalid), tuple(unknown))


def pins_error(pins: object) -> str | None:
    """Validate request pins (the six required, formats checked); ``None`` when valid, else one
    line naming every problem (:meth:`PinsProblems.detail`)."""
    problems = pins_problems(pins)
    return problems.detail() if problems else None


def field_check(name: str) -> Callable[[object], bool]:
    """The format check :func:`envelope_error` applies to a present, non-null field ``name``.

    For checkers that hold the envelope in another shape (contracts/intake_fast.py): one table of
    formats, whichever path reads the event.
    """
    return _CHECKS[name][1]


def pins_problem(pins: object) -> tuple[ErrorCode, str] | None:
    """Validate request pins; ``None`` when valid, else ``(code, detail)`` naming every problem.

    ``code`` is ``MISSING_PINS`` when pins are absent or a required pin is omitted (or ``null``),
    ``INVALID_REQUEST`` when a pin is malformed or a key is not a pin. Only the pins in
    :data:`OPTIONAL_PINS` may be omitted.
    """
    problems = pins_problems(pins)
    if not problems:
        return None
    missing = not pins or (bool(problems.missing) and not problems.not_object)
    return (ErrorCode.MISSING_PINS if missing else ErrorCode.INVALID_REQUEST), problems.detail()


def pins_mismatch(request_pins: Mapping[str, Any], stored_pins: Mapping[str, Any]) -> list[str]:
    """The pins of a request that differ from the stored pins of what would be served.

    The one rule of both planes: **every pin the request carries must equal the stored pin**. The
    six required pins are always compared; an optional pin (``run_id``) is compared whenever the
    request carries it, so a request naming a ``run_id`` does not match rows stored without one
    (**differs** from the origin, which compared ``run_id`` only when both sides had it). A pin
    the request omits is not compared (omitting a required one is ``MISSING_PINS`` at parsing).
    Values are compared as strings, as the origin does (stored ``scenario_id`` is text).

    Returns:
        the names of the differing pins, in :data:`PIN_FIELDS` order then the optional ones;
        empty when the request may be served from these rows.
    """
    names = [name for name in PIN_FIELDS if str(request_pins.get(name)) != str(stored_pins.get(name))]
    for name in OPTIONAL_PINS:
        wanted = request_pins.get(name)
        if wanted is not None and str(wanted) != str(stored_pins.get(name)):
            names.append(name)
    return names
