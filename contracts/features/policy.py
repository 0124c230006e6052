"""The feature-definition policy: pinned YAML format, validation, canonical digest.

The format (docs/configuration.md §Feature policy format) is public so operators and outside harnesses can supply their own
file; the origin platform's ``features_v0.yaml`` loads unchanged (a group without
``aggregations`` gets the origin's ``[event_count, amount_sum, last_event_ts_utc]``, a group
without ``key_type``/``key_types`` is keyed by ``flow_id``, and a window may be written as a bare
token ``1h``). Everything else is strict: unknown keys, malformed durations, ``ttl < duration``,
duplicate windows or groups and unknown aggregations are refused, so a typo can never silently
change what is served.

Errors. :func:`load_policy` raises :class:`PolicyError` with one line,
``<file>: <path>: <problem>``, e.g.
``features.v0.yaml: feature_groups[1].windows[0].ttl: ttl 30m is shorter than duration 1h``.
This is the only module of the feature core that does I/O (reading that one file).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ctxplane.contracts.canonical import digest
from ctxplane.contracts.exceptions import ConfigError
from ctxplane.contracts.features.aggregate import AGGREGATIONS
from ctxplane.contracts.yamlfile import YAMLError, load_yaml, yaml_problem

__all__ = (
    "DEFAULT_AGGREGATIONS",
    "DEFAULT_KEY_TYPE",
    "FeatureGroup",
    "FeaturePolicy",
    "PolicyError",
    "WindowSpec",
    "default_policy_path",
    "load_policy",
    "parse_duration",
    "parse_policy",
    "run_config_digest",
)


class PolicyError(ConfigError, ValueError):
    """The feature policy is missing, unreadable or invalid.

    Raised by :func:`load_policy` and :func:`parse_policy`. The message is one line naming the
    file and the offending key path; the process must refuse to start.
    """


#: Key type of a group that names neither ``key_type`` nor ``key_types`` (origin loader rule).
DEFAULT_KEY_TYPE = "flow_id"
#: Aggregations of a group that names none: the origin's three cumulative values.
DEFAULT_AGGREGATIONS: tuple[str, ...] = ("event_count", "amount_sum", "last_event_ts_utc")
# Windows of a group that names none (origin loader rule).
_DEFAULT_WINDOW_TOKENS = ("1h", "24h", "7d")

_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
# No zero, no sign, no leading zeros, at most 9 digits: "0h" is not a window and "007d" is a typo.
_DURATION_RE = re.compile(r"([1-9][0-9]{0,8})([smhd])", re.ASCII)
# Names end up as JSON keys, log fields and request parameters: keep them plain.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}", re.ASCII)
# A key type is a payload field name, and "key_type:key_id" is a map key in responses.
_KEY_TYPE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}", re.ASCII)


def parse_duration(text: object) -> int:
    """``"<int><s|m|h|d>"`` → seconds, e.g. ``"24h"`` → 86400.

    Raises:
        ValueError: not a string in that form (a positive integer without leading zeros, at most
            9 digits, then one unit letter).
    """
    if not isinstance(text, str):
        raise ValueError(f"{text!r} is not a duration <int><s|m|h|d> such as 90s, 15m, 1h or 7d")
    return _parse_duration_text(text)


@lru_cache(maxsize=256)  # few distinct strings, read on every query for every window
def _parse_duration_text(text: str) -> int:
    m = _DURATION_RE.fullmatch(text)
    if m is None:
        raise ValueError(f"{text!r} is not a duration <int><s|m|h|d> such as 90s, 15m, 1h or 7d")
    return int(m.group(1)) * _UNIT_SECONDS[m.group(2)]


class _At(ValueError):
    """A validation failure located *below* the field being validated (a list index, a sub-key).

    Pydantic reports the field's location; :func:`_describe` appends ``subpath`` so the message
    points at the exact entry (``windows[2].window`` rather than ``windows``).
    """

    def __init__(self, subpath: tuple[int | str, ...], message: str) -> None:
        super().__init__(message)
        self.subpath = subpath


def _check_name(value: str) -> str:
    if _NAME_RE.fullmatch(value) is None:
        raise ValueError(
            f"{value[:64]!r} is not a valid name (letters, digits, '_', '.', '-'; "
            "starting with a letter or digit; at most 128 characters)"
        )
    return value


def _check_key_type(value: str) -> str:
    if _KEY_TYPE_RE.fullmatch(value) is None:
        raise ValueError(
            f"{value[:64]!r} is not a valid key type (a payload field name: letters, digits, '_')"
        )
    return value


_Name = Annotated[str, AfterValidator(_check_name)]
_KeyType = Annotated[str, AfterValidator(_check_key_type)]


class _Frozen(BaseModel):
    # Immutable (shared across actors, hashable) and strict about keys: an unknown key is a typo.
    model_config = ConfigDict(frozen=True, extra="forbid")


class WindowSpec(_Frozen):
    """One window of a group: ``{window, duration, ttl}``; ``ttl`` defaults to ``duration``.

    Invariant: ``ttl_seconds >= duration_seconds > 0``.
    """

    window: _Name
    duration: str
    ttl: str

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        # Origin forms: a bare token "1h" means {window: 1h, duration: 1h, ttl: 1h}; a mapping may
        # omit window (named after its duration) and ttl (equal to duration).
        if isinstance(data, str):
            return {"window": data, "duration": data, "ttl": data}
        if isinstance(data, Mapping) and isinstance(data.get("duration"), str):
            data = dict(data)
            data.setdefault("window", data["duration"])
            data.setdefault("ttl", data["duration"])
        return data

    @field_validator("duration", mode="before")
    @classmethod
    def _check_duration(cls, value: Any) -> Any:
        parse_duration(value)
        return value

    @field_validator("ttl", mode="before")
    @classmethod
    def _check_ttl(cls, value: Any, info: ValidationInfo) -> Any:
        ttl_s = parse_duration(value)
        duration = info.data.get("duration")
        if duration is not None and ttl_s < parse_duration(duration):
            raise ValueError(f"ttl {value} is shorter than duration {duration}")
        return value

    @property
    def duration_seconds(self) -> int:
        return _parse_duration_text(self.duration)

    @property
    def ttl_seconds(self) -> int:
        return _parse_duration_text(self.ttl)

    @property
    def duration_us(self) -> int:
        return _parse_duration_text(self.duration) * 1_000_000

    @property
    def ttl_us(self) -> int:
        return _parse_duration_text(self.ttl) * 1_000_000


def _default_windows() -> tuple[WindowSpec, ...]:
    return tuple(WindowSpec.model_validate(token) for token in _DEFAULT_WINDOW_TOKENS)


class FeatureGroup(_Frozen):
    """One feature group: ``{name, version, key_type | key_types, windows, aggregations}``.

    ``key_types`` is always the normalised, sorted tuple of key types, whichever spelling the file
    used (``key_type`` keeps what was written, or ``None``).
    """

    name: _Name
    version: _Name
    key_type: _KeyType | None = None
    # Filled from key_type (or the default) by _normalise_key_types; always a non-empty tuple.
    key_types: tuple[_KeyType, ...] = Field(default=None, validate_default=True)
    windows: tuple[WindowSpec, ...] = Field(default_factory=_default_windows)
    aggregations: tuple[str, ...] = DEFAULT_AGGREGATIONS

    @field_validator("key_types", mode="before")
    @classmethod
    def _normalise_key_types(cls, value: Any, info: ValidationInfo) -> Any:
        if "key_type" not in info.data:
            # key_type itself was invalid and is reported; do not add a second, derived error.
            return (DEFAULT_KEY_TYPE,)
        key_type = info.data["key_type"]
        if value is None:
            return (key_type if key_type is not None else DEFAULT_KEY_TYPE,)
        if key_type is not None:
            raise ValueError("give key_type or key_types, not both")
        return value

    @field_validator("key_types")
    @classmethod
    def _check_key_types(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("key_types must name at least one key type")
        _reject_duplicates(value, "key type")
        return tuple(sorted(value))

    @field_validator("windows")
    @classmethod
    def _check_windows(cls, value: tuple[WindowSpec, ...]) -> tuple[WindowSpec, ...]:
        if not value:
            raise ValueError("windows must name at least one window")
        seen: dict[str, int] = {}
        for i, w in enumerate(value):
            if w.window in seen:
                raise _At(
                    (i, "window"),
                    f"duplicate window {w.window!r} (also windows[{seen[w.window]}])",
                )
            seen[w.window] = i
        return value

    @field_validator("aggregations")
    @classmethod
    def _check_aggregations(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("aggregations must name at least one aggregation")
        for i, name in enumerate(value):
            if name not in AGGREGATIONS:
                raise _At(
                    (i,), f"unknown aggregation {name!r}; known: {', '.join(sorted(AGGREGATIONS))}"
                )
        _reject_duplicates(value, "aggregation")
        return value

    def canonical_content(self) -> dict[str, Any]:
        """The digested content of this group (see :meth:`FeaturePolicy.canonical_content`)."""
        return {
            "name": self.name,
            "version": self.version,
            "key_types": list(self.key_types),
            "windows": [
                {
                    "window": w.window,
                    "duration_seconds": w.duration_seconds,
                    "ttl_seconds": w.ttl_seconds,
                }
                for w in self.windows
            ],
            "aggregations": list(self.aggregations),
        }

    def max_ttl_seconds(self) -> int:
        """The longest ``ttl`` of the group's windows."""
        return max(w.ttl_seconds for w in self.windows)


def _reject_duplicates(values: tuple[str, ...], what: str) -> None:
    seen: dict[str, int] = {}
    for i, v in enumerate(values):
        if v in seen:
            raise _At((i,), f"duplicate {what} {v!r} (also at index {seen[v]})")
        seen[v] = i


class FeaturePolicy(_Frozen):
    """A validated feature policy. Build it with :func:`load_policy` or
    :func:`parse_policy`.

    Invariants: at least one group; ``(name, version)`` unique across groups; window names unique
    within a group; ``content_digest`` is the SHA-256 of :meth:`canonical_content`, computed once.
    """

    policy_id: _Name
    revision: _Name
    feature_groups: tuple[FeatureGroup, ...]

    _content_digest: str = PrivateAttr(default="")
    _groups: dict[tuple[str, str], FeatureGroup] = PrivateAttr(default_factory=dict)

    @field_validator("feature_groups")
    @classmethod
    def _check_groups(cls, value: tuple[FeatureGroup, ...]) -> tuple[FeatureGroup, ...]:
        if not value:
            raise ValueError("feature_groups must name at least one group")
        seen: dict[tuple[str, str], int] = {}
        for i, g in enumerate(value):
            ident = (g.name, g.version)
            if ident in seen:
                raise _At(
                    (i,),
                    f"duplicate group {g.name} {g.version} (also feature_groups[{seen[ident]}])",
                )
            seen[ident] = i
        return value

    def model_post_init(self, context: Any, /) -> None:
        # Private attributes may be set on a frozen model; computed once, read per request.
        self._content_digest = digest(self.canonical_content())
        self._groups = {(g.name, g.version): g for g in self.feature_groups}

    def canonical_content(self) -> dict[str, Any]:
        """The normalised content that :attr:`content_digest` hashes::

            {policy_id, revision, feature_groups: [{name, version, key_types (sorted),
             windows: [{window, duration_seconds, ttl_seconds}], aggregations}]}

        Spelling-only differences (``key_type: x`` vs ``key_types: [x]``, ``60m`` vs ``1h``, an
        omitted ttl vs ``ttl`` equal to duration) do not change it; any change of meaning does.
        """
        return {
            "policy_id": self.policy_id,
            "revision": self.revision,
            "feature_groups": [g.canonical_content() for g in self.feature_groups],
        }

    @property
    def content_digest(self) -> str:
        """SHA-256 hex of the canonical JSON of :meth:`canonical_content`."""
        return self._content_digest

    def rev(self) -> dict[str, str]:
        """``feature_def_policy_rev`` as served: ``{policy_id, revision, content_digest}``."""
        return {
            "policy_id": self.policy_id,
            "revision": self.revision,
            "content_digest": self._content_digest,
        }

    def group(self, name: str, version: str) -> FeatureGroup | None:
        """The group ``(name, version)``, or ``None`` when the policy has no such group (which a
        query reports as ``MISSING_FEATURE_GROUP``, not as an error)."""
        return self._groups.get((name, version))

    def key_types(self) -> tuple[str, ...]:
        """Sorted union of the key types of all groups (the payload fields intake must read)."""
        return tuple(sorted({kt for g in self.feature_groups for kt in g.key_types}))

    def max_ttl_seconds(self) -> int:
        """The longest ``ttl`` over all groups: state older than that (+ grace) may be pruned."""
        return max(g.max_ttl_seconds() for g in self.feature_groups)


def run_config_digest(
    policy: FeaturePolicy, *, topics: list[str], bus_kind: str, platform_run_id: str | None
) -> str:
    """SHA-256 hex of the canonical JSON of ``{feature_def_policy_rev, topics (sorted, unique),
    bus_kind, platform_run_id}``: names the configuration a snapshot was computed under."""
    return digest(
        {
            "feature_def_policy_rev": policy.rev(),
            "topics": sorted(set(topics)),
            "bus_kind": bus_kind,
            "platform_run_id": platform_run_id,
        }
    )


def default_policy_path() -> Path:
    """Path of the default policy shipped as package data (``config/policies/features.v0.yaml``).

    Valid for a regular (non-zipped) installation, which is how ctxplane is installed.
    """
    return Path(str(files("ctxplane.config") / "policies" / "features.v0.yaml"))


# ---------------------------------------------------------------------------------------------
# Loading and error messages
# ---------------------------------------------------------------------------------------------


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out or "<top level>"


_MODEL_AT: dict[tuple[str, ...], type[BaseModel]] = {
    (): FeaturePolicy,
    ("feature_groups",): FeatureGroup,
    ("feature_groups", "windows"): WindowSpec,
}


def _describe(exc: ValidationError) -> str:
    """One line for a pydantic ValidationError: the first error's path and problem."""
    errors = exc.errors()
    err = errors[0]
    loc: tuple[int | str, ...] = tuple(err["loc"])
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, _At):
        loc += cause.subpath
    kind = err["type"]
    if isinstance(cause, ValueError):
        problem = str(cause)
    elif kind == "missing":
        problem = "required key is missing"
    elif kind == "extra_forbidden":
        model = _MODEL_AT.get(tuple(p for p in loc[:-1] if isinstance(p, str)))
        allowed = f"; allowed: {', '.join(model.model_fields)}" if model is not None else ""
        problem = f"unknown key{allowed}"
    elif kind == "model_type":
        problem = f"expected a mapping, got {type(err['input']).__name__}"
    elif kind == "string_type":
        problem = f"expected a string, got {type(err['input']).__name__}"
    elif kind == "tuple_type":
        problem = f"expected a list, got {type(err['input']).__name__}"
    else:
        problem = err["msg"]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{_format_loc(loc)}: {problem}{more}"


def parse_policy(data: object, *, source: str = "<policy>") -> FeaturePolicy:
    """Validate an already-parsed policy document.

    Args:
        data: the YAML/JSON document (a mapping).
        source: how messages name the document (the file path for :func:`load_policy`).

    Raises:
        PolicyError: ``data`` is not a mapping or is not a valid policy; one line
            ``<source>: <key path>: <problem>``.
    """
    if not isinstance(data, Mapping):
        got = "an empty document" if data is None else f"a {type(data).__name__}"
        raise PolicyError(
            f"{source}: expected a mapping with policy_id, revision and feature_groups, got {got}"
        )
    try:
        return FeaturePolicy.model_validate(data)
    except ValidationError as exc:
        raise PolicyError(f"{source}: {_describe(exc)}") from None


def load_policy(path: str | os.PathLike[str]) -> FeaturePolicy:
    """Read and validate a policy file.

    Raises:
        PolicyError: the file is missing or unreadable, is not valid YAML (duplicate keys
            included), or is not a valid policy. The message is one line starting with the path.
    """
    source = os.fspath(path)
    try:
        raw = Path(source).read_bytes()
    except FileNotFoundError:
        raise PolicyError(f"{source}: policy file not found") from None
    except OSError as exc:
        raise PolicyError(f"{source}: cannot read policy file: {exc.strerror or exc}") from None
    try:
        data = load_yaml(raw)
    except YAMLError as exc:
        raise PolicyError(f"{source}: {yaml_problem(exc)}") from None
    return parse_policy(data, source=source)
