"""Replay manifests (docs/operations.md §Replay, §Rebuild): the model, loading one, its id, and the
rebuild manifest for a store's checkpoints.

A *replay manifest* names an explicit offset window per partition::

    topics:
      - topic: fp.bus.context.arrival_events.v1
        partitions:
          - {partition: 0, from_offset: 0, to_offset: 4999}
    pins: {platform_run_id: platform_20260207T000000Z}     # optional

File-bus semantics: ``from_offset`` is inclusive and defaults to 0; ``to_offset`` is inclusive and
defaults to the partition's end *when the replay starts* (records appended later are not part of
the window). A partition with neither bound is refused: a replay window is always explicit.

:func:`manifest_for_checkpoints` writes the manifest a rebuild replays into a fresh store: every
record before the live store's checkpoints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from ctxplane.actors.resources import open_ready_store, scope_of
from ctxplane.actors.tables.reads import checkpoints_program
from ctxplane.config.settings import Settings
from ctxplane.contracts.canonical import digest
from ctxplane.contracts.yamlfile import YAMLError, load_yaml
from ctxplane.runtime.bus import FILE_LINE
from ctxplane.runtime.exceptions import UsageError

__all__ = (
    "ReplayManifest",
    "ReplayPartition",
    "ReplayPins",
    "ReplayTopic",
    "load_manifest",
    "manifest_for_checkpoints",
    "replay_id",
)


def _offset(value: object) -> object:
    """Offsets are non-negative integers; decimal strings (the form a basis carries) are accepted.

    Booleans are refused (YAML ``yes`` would otherwise be offset 1)."""
    if isinstance(value, bool):
        raise ValueError("must be a non-negative integer offset, not a boolean")
    if isinstance(value, str):
        if not (value.isascii() and value.isdigit()):
            raise ValueError(f"must be a non-negative integer offset (got {value!r})")
        return int(value)
    return value


Offset = Annotated[int, BeforeValidator(_offset), Field(ge=0, strict=True)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ReplayPartition(_Model):
    """One partition's window: ``from_offset`` and ``to_offset`` are both inclusive line indexes."""

    partition: int = Field(ge=0, strict=True)
    from_offset: Offset | None = None
    to_offset: Offset | None = None
    # Accepted for origin manifests; this build replays file buses only.
    offset_kind: Literal["file_line"] | None = None

    @model_validator(mode="after")
    def _bounded(self) -> ReplayPartition:
        if self.from_offset is None and self.to_offset is None:
            raise ValueError(
                f"partition {self.partition} has neither from_offset nor to_offset: a replay window must be "
                "explicit (give from_offset, to_offset or both)"
            )
        if self.from_offset is not None and self.to_offset is not None and self.from_offset > self.to_offset:
            raise ValueError(f"from_offset {self.from_offset} is after to_offset {self.to_offset}")
        return self


class ReplayTopic(_Model):
    topic: str = Field(min_length=1)
    partitions: list[ReplayPartition] = Field(min_length=1)


class ReplayPins(_Model):
    """Pins every replayed event must carry (compared as strings; a ``null`` pin is not checked)."""

    platform_run_id: str | None = None
    scenario_run_id: str | None = None
    manifest_fingerprint: str | None = None
    parameter_hash: str | None = None
    scenario_id: str | int | None = None
    seed: int | str | None = None
    run_id: str | None = None


class ReplayManifest(_Model):
    """A replay manifest (docs/operations.md §Replay). Unknown keys are errors."""

    topics: list[ReplayTopic] = Field(min_length=1)
    pins: ReplayPins | None = None

    @model_validator(mode="after")
    def _distinct(self) -> ReplayManifest:
        seen: set[tuple[str, int]] = set()
        for topic in self.topics:
            for part in topic.partitions:
                key = (topic.topic, part.partition)
                if key in seen:
                    raise ValueError(f"{topic.topic} partition {part.partition} is listed twice")
                seen.add(key)
        return self

    def canonical(self) -> dict[str, Any]:
        """The manifest as plain JSON data, unset keys left out: what ``replay_id`` digests."""
        return self.model_dump(mode="json", exclude_none=True)

    def pin_values(self) -> dict[str, Any] | None:
        if self.pins is None:
            return None
        values = self.pins.model_dump(exclude_none=True)
        return values or None


def replay_id(manifest: ReplayManifest) -> str:
    """The first 32 hex chars of the SHA-256 of the canonical manifest: the same manifest always has
    the same id, so replaying it again overwrites its ``replays`` row."""
    return digest(manifest.canonical())[:32]


def load_manifest(path: str | Path) -> ReplayManifest:
    """Read and validate a YAML or JSON manifest.

    Raises:
        UsageError: unreadable file, bad YAML/JSON, or an invalid manifest; one line naming the key.
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read replay manifest {file}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UsageError(f"replay manifest {file} is not UTF-8 text") from None
    try:
        raw = load_yaml(text)
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UsageError(f"{file}: invalid YAML/JSON{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(raw, dict):
        raise UsageError(f"{file}: a replay manifest is a mapping with a `topics` list")
    try:
        return ReplayManifest.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(str(part) for part in error["loc"]) or "(top level)"
        message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"].removeprefix("Value error, ")
        raise UsageError(f"{file}: {key}: {message}") from None


async def manifest_for_checkpoints(settings: Settings) -> dict[str, Any]:
    """A manifest replaying every record before the store's current checkpoints (the rebuild
    manifest for that basis): each consumed partition from offset 0 to ``next_offset - 1``.

    Partitions whose checkpoint is 0 have nothing to replay and are left out. Reads only; needs no
    lock (the checkpoints are read in one snapshot).

    Raises:
        UsageError: the store has no checkpoint at all (nothing was consumed yet).
    """
    planes = settings.topics()
    scope = scope_of(settings)
    store = await open_ready_store(settings)
    try:
        rows = await store.read(checkpoints_program(scope))
    finally:
        await store.aclose()
    topics: dict[str, list[dict[str, int]]] = {}
    for row in rows:
        if row.topic in planes and row.offset_kind == FILE_LINE and int(row.next_offset) > 0:
            topics.setdefault(row.topic, []).append(
                {"partition": row.partition, "from_offset": 0, "to_offset": int(row.next_offset) - 1}
            )
    if not topics:
        raise UsageError(f"the store has no checkpoint past offset 0 in scope {scope}: nothing to replay")
    return {"topics": [{"topic": topic, "partitions": parts} for topic, parts in sorted(topics.items())]}
