"""Replay, rebuild and explicit checkpoint rewind (contracts.md §5; origin §2.6, §3.12).

Replay
------
A *replay manifest* names an explicit offset window per partition::

    topics:
      - topic: fp.bus.context.arrival_events.v1
        partitions:
          - {partition: 0, from_offset: 0, to_offset: 4999}
    pins: {platform_run_id: platform_20260207T000000Z}     # optional

File-bus semantics: ``from_offset`` is inclusive and defaults to 0; ``to_offset`` is inclusive and
defaults to the partition's end *when the replay starts* (records appended later are not part of
the window). A partition with neither bound is refused: a replay window is always explicit.

:func:`replay` reads exactly that window, classifies every record with the live intake rules plus
``replay_pins`` (a mismatching event becomes a ``REPLAY_PINS_MISMATCH`` ledger row), and applies the
verdicts through the live :func:`~ctxplane.actors.ingest.apply.apply_program` — same dedupe, same effects, same
counters, effects and checkpoint in one transaction per group commit. Checkpoints move forward
only; and a window that starts *past* a partition's committed checkpoint leaves that checkpoint as
it was (in the same transaction), because advancing it would silently skip the records in the gap
for the live consumer. Finally the replay is recorded in ``replays`` with the applied basis.

Rebuild = a fresh store + a replay of every partition up to a basis (:func:`manifest_for_checkpoints`
writes that manifest from a store's checkpoints). Effects are commutative and deduplicated, so the
rebuilt store has the live store's state digest.

Rewind
------
:func:`rewind_checkpoint` moves one checkpoint backward (``ctxplane.actors.operate.checkpoint_reset``
moves many, either way): one transaction sets the new position and appends an audit row to
``checkpoint_rewinds`` (``ctxplane.actors.operate.checkpoint_audit``). The records between the two positions
are re-delivered to the next ``ctxplane run`` and count as duplicates: zero state change.

Exclusion: replay and rewind refuse while a ``ctxplane run`` works on the store (its lock file on
SQLite, its live partition leases on PostgreSQL, and for a rewind its query endpoint:
``ctxplane.actors.operate.exclusive``), since two writers would interleave checkpoints.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
import structlog
from anyio.streams.memory import MemoryObjectSendStream
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from ctxplane.actors.ingest.apply import ApplyOutcome, apply_program
from ctxplane.actors.ingest.isolate import write_isolating
from ctxplane.actors.operate.checkpoint_audit import AuditEntry, audit_move
from ctxplane.actors.operate.exclusive import exclusive_store
from ctxplane.actors.operate.reporting import WorkReporter
from ctxplane.actors.resources import open_bus, open_ready_store, scope_of, tune_gc_for_ingest
from ctxplane.actors.tables.features import FeatureWriter
from ctxplane.actors.tables.reads import basis_program, checkpoints_program
from ctxplane.config.settings import Settings
from ctxplane.contracts.canonical import canonical_json, digest
from ctxplane.contracts.classes import Plane
from ctxplane.contracts.intake import IntakeRules, SourceRef, Verdict
from ctxplane.contracts.intake_fast import FastIntake
from ctxplane.contracts.join import CheckpointRow
from ctxplane.contracts.lateness import fold_lateness
from ctxplane.contracts.messages import ApplyBatch
from ctxplane.contracts.timestamps import now_utc, parse_ts_us
from ctxplane.contracts.yamlfile import YAMLError, load_yaml
from ctxplane.runtime.bus import FILE_LINE, EventBus
from ctxplane.runtime.exceptions import Interrupted, UsageError
from ctxplane.runtime.signals import StopRequest
from ctxplane.runtime.store import Execute, Fetch, Program

__all__ = (
    "REPLAY_TOPIC_NOT_ALLOWED",
    "ReplayManifest",
    "ReplayPartition",
    "ReplayPins",
    "ReplayReport",
    "ReplayTopic",
    "RewindReport",
    "load_manifest",
    "manifest_for_checkpoints",
    "replay",
    "replay_id",
    "rewind_checkpoint",
)

log = structlog.get_logger("ctxplane.replay")

#: The refusal code for a manifest topic that no enabled plane consumes (the origin's
#: ``CSFB_REPLAY_TOPIC_NOT_ALLOWED``).
REPLAY_TOPIC_NOT_ALLOWED = "REPLAY_TOPIC_NOT_ALLOWED"

# Group commits handed from the reader/classifier to the writer: one being written while the next
# is classified. Classification holds the GIL, but sqlite3 releases it inside each statement, so
# the two overlap; a deeper queue only holds more memory (a group is ~20k decoded events).
_PIPELINE_DEPTH = 1


# -- the manifest --------------------------------------------------------------------------------


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
    """A replay manifest (contracts.md §5). Unknown keys are errors."""

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
    """The first 32 hex chars of the SHA-256 of the canonical manifest (origin §2.6)."""
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


# -- replay --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Window:
    """One partition's resolved window: offsets ``start`` (inclusive) to ``stop`` (exclusive)."""

    plane: Plane
    topic: str
    partition: int
    start: int
    stop: int
    # The committed checkpoint when the replay started (None: the partition has none).
    checkpoint: CheckpointRow | None
    # True when the window starts at or before the checkpoint (or at 0 without one): applying it
    # leaves no unread gap, so the checkpoint may advance to the window's end.
    contiguous: bool
    # The lateness watermark the window starts with: the checkpoint's when contiguous (what the
    # live partition actor would resume with), else none — the window is judged on its own.
    watermark_us: int | None
    allowed_lateness_us: int


@dataclass(frozen=True, slots=True)
class ReplayReport:
    """What one replay did.

    ``events`` counts the records read in the windows; ``counts`` is the apply outcome per intake
    counter name (``applied``, ``duplicate``, ``rejected``, ``ignored``, ``payload_hash_mismatch``).
    ``basis`` is the applied basis of each replayed plane after the replay, and ``basis_digest`` the
    SHA-256 of the canonical ``{plane: plane basis_digest}``. ``held`` lists the partitions whose
    checkpoint was left where it was because their window started past it.
    """

    replay_id: str
    events: int
    counts: dict[str, int]
    basis: dict[str, dict[str, Any]]
    basis_digest: str
    seconds: float
    held: tuple[tuple[str, int], ...]

    @property
    def applied(self) -> int:
        return self.counts.get("applied", 0)

    @property
    def duplicates(self) -> int:
        return self.counts.get("duplicate", 0)

    @property
    def rejected(self) -> int:
        return self.counts.get("rejected", 0) + self.counts.get("payload_hash_mismatch", 0)

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else float("inf")

    def summary(self) -> str:
        """The one-line summary ``ctxplane replay`` prints."""
        held = f" held_checkpoints={len(self.held)}" if self.held else ""
        return (
            f"replay_id={self.replay_id} events_read={self.events} applied={self.applied} "
            f"duplicates={self.duplicates} rejected={self.rejected} basis_digest={self.basis_digest} "
            f"events_per_s={self.events_per_s:.0f} seconds={self.seconds:.2f}{held}"
        )


def _rules(settings: Settings, plane: Plane, features: Any, pins: Mapping[str, Any] | None) -> IntakeRules:
    """The live intake rules of ``plane`` (as ``ctxplane.actors.app.tree`` builds them) plus the replay pins."""
    run = settings.run.platform_run_id
    if plane is Plane.JOIN:
        return IntakeRules(Plane.JOIN, frozenset(settings.join_plane.topics), required_run=run, replay_pins=pins)
    return IntakeRules(
        Plane.FEATURES, frozenset(settings.features.topics), required_run=run, replay_pins=pins,
        feature_key_types=features.key_types if features is not None else (),
        parse_amount=features.parse_amount if features is not None else None,
    )


async def _windows(
    settings: Settings, manifest: ReplayManifest, bus: EventBus, checkpoints: Mapping[tuple[str, int], CheckpointRow]
) -> list[_Window]:
    planes = settings.topics()
    windows = []
    for entry in manifest.topics:
        plane = Plane(planes[entry.topic])
        lateness_s = settings.join_plane.allowed_lateness_s if plane is Plane.JOIN else settings.features.allowed_lateness_s
        existing = await bus.list_partitions(entry.topic)
        for part in entry.partitions:
            if part.partition not in existing:
                shown = ", ".join(map(str, existing)) or "none"
                raise UsageError(f"topic {entry.topic} has no partition {part.partition} on the bus (partitions: {shown})")
            # The default end is fixed now: records published during the replay are not in the window.
            end = int(await bus.end_position(entry.topic, part.partition))
            start = part.from_offset or 0
            stop = part.to_offset + 1 if part.to_offset is not None else end
            checkpoint = checkpoints.get((entry.topic, part.partition))
            contiguous = start <= int(checkpoint.next_offset) if checkpoint is not None else start == 0
            watermark = None
            if contiguous and checkpoint is not None and checkpoint.watermark_ts_utc:
                watermark = parse_ts_us(checkpoint.watermark_ts_utc)
            windows.append(_Window(
                plane, entry.topic, part.partition, start, max(stop, start), checkpoint, contiguous, watermark,
                int(lateness_s * 1_000_000),
            ))
    return windows


async def _produce(
    send: MemoryObjectSendStream[list[ApplyBatch]],
    bus: EventBus,
    windows: Sequence[_Window],
    rules: Mapping[Plane, IntakeRules],
    *,
    scope: str,
    read_records: int,
    read_bytes: int,
    group_records: int,
    read_counter: list[int],
) -> None:
    """Read and classify every window, in manifest order, into group commits of ~``group_records``.

    Mirrors the partition actor's batch assembly (same classification, the same lateness fold:
    contracts/lateness.py), so a replay of a whole partition produces the verdicts a live pass would.
    """
    # The partition actor's classifier: the reference verdicts, a valid event in a fraction of the time.
    classifiers = {plane: FastIntake(plane_rules).classify for plane, plane_rules in rules.items()}
    async with send:
        group: list[ApplyBatch] = []
        size = 0
        seq = 0
        for window in windows:
            classify = classifiers[window.plane]
            position = window.start
            watermark = window.watermark_us
            allowed = window.allowed_lateness_us
            while position < window.stop:
                result = await bus.read(
                    window.topic, window.partition, str(position), min(read_records, window.stop - position), read_bytes
                )
                next_position = int(result.next_position)
                if next_position == position:
                    break  # the end of the data (or a half-written last line): the window is shorter
                verdicts: list[Verdict] = []
                for record in result.records:
                    # Blank lines count as offsets but carry no record, so a read may run past the
                    # window's end; such records belong to the next window, not this one.
                    if int(record.offset) >= window.stop:
                        break
                    verdicts.append(classify(SourceRef(record.topic, record.partition, record.offset, record.offset_kind),
                                             record.raw, record.full_size))
                marked, watermark = fold_lateness(verdicts, watermark, allowed)
                position = min(next_position, window.stop)
                read_counter[0] += len(verdicts)
                group.append(ApplyBatch(
                    plane=window.plane, scope=scope, topic=window.topic, partition=window.partition,
                    offset_kind=bus.offset_kind, verdicts=marked, next_offset=str(position),
                    watermark_us=watermark, seq=seq, reply_to=None,
                ))
                seq += 1
                size += len(verdicts)
                if size >= group_records:
                    await send.send(group)
                    group, size = [], 0
        if group:
            await send.send(group)


_RESTORE_CHECKPOINT = (
    "UPDATE checkpoints SET next_offset = ?, offset_kind = ?, watermark_ts_utc = ?"
    " WHERE scope = ? AND topic = ? AND partition_id = ?"
)
_DROP_CHECKPOINT = "DELETE FROM checkpoints WHERE scope = ? AND topic = ? AND partition_id = ?"


def replay_group_program(
    batches: Sequence[ApplyBatch],
    *,
    recorded_at: str,
    features: FeatureWriter | None,
    held: Mapping[tuple[str, str, int], CheckpointRow | None],
) -> Program[ApplyOutcome]:
    """One replay group commit: :func:`apply_program`, then — in the same transaction — put back the
    checkpoint of every ``held`` partition (window not contiguous with its checkpoint) as it was
    when the replay started, or remove it if there was none."""
    outcome = yield from apply_program(batches, recorded_at=recorded_at, features=features)
    touched = {(b.scope, b.topic, b.partition) for b in batches}
    for key in sorted(touched & held.keys()):
        previous = held[key]
        if previous is None:
            yield Execute(_DROP_CHECKPOINT, key)
        else:
            yield Execute(_RESTORE_CHECKPOINT, (previous.next_offset, previous.offset_kind, previous.watermark_ts_utc, *key))
    return outcome


_RECORD_REPLAY = (
    "INSERT INTO replays (replay_id, manifest_json, started_at_utc, finished_at_utc, events, applied, duplicates,"
    " basis_json, basis_digest) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (replay_id) DO UPDATE SET"
    " manifest_json = excluded.manifest_json, started_at_utc = excluded.started_at_utc,"
    " finished_at_utc = excluded.finished_at_utc, events = excluded.events, applied = excluded.applied,"
    " duplicates = excluded.duplicates, basis_json = excluded.basis_json, basis_digest = excluded.basis_digest"
)


def _record_program(
    rid: str, manifest: ReplayManifest, *, started_at: str, events: int, counts: Mapping[str, int], scope: str,
    planes: tuple[str, ...],
) -> Program[tuple[dict[str, dict[str, Any]], str]]:
    """Read the applied basis of the replayed planes and record the replay, in one transaction."""
    bases = yield from basis_program(scope, planes)
    basis_digest = digest({plane: basis["basis_digest"] for plane, basis in bases.items()})
    yield Execute(_RECORD_REPLAY, (
        rid, canonical_json(manifest.canonical()).decode(), started_at, now_utc(), events,
        counts.get("applied", 0), counts.get("duplicate", 0), canonical_json(bases).decode(), basis_digest,
    ))
    return bases, basis_digest


def _interrupted(stop: StopRequest, rid: str, *, groups: int, counts: Mapping[str, int],
                 last: ApplyBatch | None) -> Interrupted:
    """The one line an interrupted replay ends with: what it committed, and where it stopped."""
    assert stop.signum is not None
    if last is None:
        where = "before its first group commit: nothing was applied"
    else:
        where = (f"after {groups} group commit(s) at {last.topic} partition {last.partition} offset {last.next_offset}"
                 " (the manifest's partitions before it are done, the ones after it not started)")
    return Interrupted(stop.signum, (
        f"replay {rid} interrupted by {stop.name} {where}; events_committed={sum(counts.values())} "
        f"applied={counts.get('applied', 0)} "
        f"duplicates={counts.get('duplicate', 0)}; every group commit is whole: run the same replay again to finish it"
    ))


async def replay(settings: Settings, manifest: ReplayManifest, *, stop: StopRequest | None = None,
                 reporter: WorkReporter | None = None) -> ReplayReport:
    """Apply exactly the manifest's window to the configured store; record and return what it did.

    Args:
        settings: the deployment (store, bus, planes, intake and ingest settings).
        manifest: a validated manifest (:func:`load_manifest`).
        stop: when it is requested (SIGINT/SIGTERM, see ``ctxplane.runtime.signals``), the replay
            stops reading, lets the group commit in progress finish, closes the store and the bus,
            and raises :class:`Interrupted`.
        reporter: told the window's size per plane and every group commit's outcome (progress and
            the summary of ``ctxplane replay``, ``actors/operate/reporting.py``).

    Returns:
        The :class:`ReplayReport`; the store then holds the window's effects, its checkpoints moved
        forward (or were held, see the module docstring), and a ``replays`` row with the basis.

    Raises:
        UsageError: a manifest topic is not consumed by an enabled plane
            (``REPLAY_TOPIC_NOT_ALLOWED: <topic>``), or a partition does not exist on the bus.
        StoreError: a ``ctxplane run`` holds the SQLite lock, or the store fails; every group
            commit is atomic, so a failed replay leaves whole group commits only, and running it
            again is safe (dedupe).
        Interrupted: ``stop`` was requested; whole group commits only, no ``replays`` row (the
            replay did not finish); the message says where it stopped.
    """
    planes = settings.topics()
    for entry in manifest.topics:
        if entry.topic not in planes:
            raise UsageError(f"{REPLAY_TOPIC_NOT_ALLOWED}: {entry.topic}")
    stop = stop if stop is not None else StopRequest()
    rid = replay_id(manifest)
    scope = scope_of(settings)
    touched = tuple(sorted({planes[entry.topic] for entry in manifest.topics}))
    feature_plane = None
    if "features" in touched:
        from ctxplane.actors.serve.features import build_feature_plane

        feature_plane = build_feature_plane(settings)
    pins = manifest.pin_values()
    rules = {Plane(plane): _rules(settings, Plane(plane), feature_plane, pins) for plane in touched}
    async with AsyncExitStack() as stack:
        store = await stack.enter_async_context(exclusive_store(settings, "replay", endpoint=False))
        bus = open_bus(settings)
        stack.push_async_callback(bus.aclose)
        checkpoints = {(cp.topic, cp.partition): cp for cp in await store.read(checkpoints_program(scope))}
        windows = await _windows(settings, manifest, bus, checkpoints)
        held = {(scope, w.topic, w.partition): w.checkpoint for w in windows if not w.contiguous}
        if reporter is not None:
            planned: Counter[str] = Counter()
            for w in windows:
                planned[w.plane.value] += w.stop - w.start
            reporter.plan(planned)
        if feature_plane is not None:
            from ctxplane.actors.tables.features import retention_meta_program

            # As the store-writer does on start: `ctxplane digest` applies retention from the store alone.
            await store.write(retention_meta_program(feature_plane.retention_us))
        tune_gc_for_ingest()
        log.info("replay starting", replay_id=rid, partitions=len(windows), held=len(held))
        started_at = now_utc()
        began = time.perf_counter()
        counts: Counter[str] = Counter()
        read_counter = [0]
        groups = 0
        last: ApplyBatch | None = None
        writer = feature_plane.writer if feature_plane is not None else None
        send, receive = anyio.create_memory_object_stream[list[ApplyBatch]](_PIPELINE_DEPTH)
        async with anyio.create_task_group() as tg:
            reading = anyio.CancelScope()

            async def produce() -> None:
                with reading:
                    await _produce(
                        send, bus, windows, rules, scope=scope, read_records=settings.ingest.batch_max_records,
                        read_bytes=settings.ingest.batch_max_bytes,
                        group_records=settings.ingest.group_commit_max_records, read_counter=read_counter,
                    )

            async def stop_reading() -> None:
                await stop.event.wait()
                log.warning("replay stopping", replay_id=rid, signal=stop.name,
                            detail="the group commit in progress finishes; nothing after it starts")
                reading.cancel()

            tg.start_soon(produce)
            tg.start_soon(stop_reading)
            async with receive:
                async for group in receive:
                    if stop.requested:
                        break  # a group read but not yet written: dropped whole, re-read by the next run
                    # As in the store-writer: a record the store refuses is ledgered, not fatal. The
                    # write is never abandoned half-way (the worker thread finishes its transaction).
                    outcome, _ = await write_isolating(store, lambda batches: replay_group_program(
                        batches, recorded_at=now_utc(), features=writer, held=held), group)
                    counts.update(outcome.counts)
                    if reporter is not None:
                        reporter.committed(outcome)
                    groups += 1
                    last = group[-1]
                    if stop.requested:
                        break
            tg.cancel_scope.cancel()
        if stop.requested:
            error = _interrupted(stop, rid, groups=groups, counts=counts, last=last)
            log.warning("replay interrupted", replay_id=rid, signal=stop.name, group_commits=groups,
                        applied=counts.get("applied", 0), topic=last.topic if last else None,
                        partition=last.partition if last else None, next_offset=last.next_offset if last else None)
            raise error
        seconds = time.perf_counter() - began
        bases, basis_digest = await store.write(_record_program(
            rid, manifest, started_at=started_at, events=read_counter[0], counts=counts, scope=scope, planes=touched,
        ))
    report = ReplayReport(
        replay_id=rid, events=read_counter[0], counts=dict(counts), basis=bases, basis_digest=basis_digest,
        seconds=seconds, held=tuple(sorted((topic, partition) for _scope, topic, partition in held)),
    )
    log.info("replay finished", replay_id=rid, events=report.events, applied=report.applied,
             duplicates=report.duplicates, rejected=report.rejected, basis_digest=basis_digest,
             events_per_s=round(report.events_per_s), held=len(held))
    return report


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


# -- rewind --------------------------------------------------------------------------------------


_REWIND = AuditEntry("rewind")


@dataclass(frozen=True, slots=True)
class RewindReport:
    """An explicit rewind: the checkpoint of ``(scope, topic, partition)`` moved from ``from_offset``
    back to ``to_offset`` at ``rewound_at_utc``."""

    scope: str
    topic: str
    partition: int
    from_offset: str
    to_offset: str
    rewound_at_utc: str

    def summary(self) -> str:
        return (f"rewound {self.topic} partition {self.partition} (scope {self.scope}) "
                f"from offset {self.from_offset} to {self.to_offset}")


def rewind_program(
    scope: str, topic: str, partition: int, *, to_offset: int | None, by: int | None, now: str,
    audit: AuditEntry = _REWIND,
) -> Program[RewindReport]:
    """Move one checkpoint back and append the audit row (``audit`` says who and why), in one
    transaction.

    Exactly one of ``to_offset`` / ``by`` is given. The watermark is kept: re-delivered records are
    duplicates, so nothing is annotated late because of a rewind.

    Raises:
        UsageError: no checkpoint for the partition, not a file-bus checkpoint, or the target is past
            the checkpoint (a rewind never moves forward) or before offset 0.
    """
    if (to_offset is None) == (by is None):
        raise UsageError("give exactly one of --to-offset and --by")
    rows = yield Fetch(
        "SELECT next_offset, offset_kind FROM checkpoints WHERE scope = ? AND topic = ? AND partition_id = ?",
        (scope, topic, partition),
    )
    if not rows:
        raise UsageError(f"no checkpoint for {topic} partition {partition} in scope {scope}: nothing to rewind")
    current_text, kind = rows[0]
    if kind != FILE_LINE:
        raise UsageError(f"{topic} partition {partition} has a {kind} checkpoint; rewind supports file_line only")
    current = int(current_text)
    if by is not None:
        target = current - by
        if target < 0:
            raise UsageError(f"cannot rewind {topic} partition {partition} by {by}: its checkpoint is at {current}")
    else:
        assert to_offset is not None
        target = to_offset
        if target > current:
            raise UsageError(
                f"--to-offset {target} is past the checkpoint of {topic} partition {partition} ({current}): "
                "a rewind only moves a checkpoint backward"
            )
    yield Execute(
        "UPDATE checkpoints SET next_offset = ?, updated_at_utc = ? WHERE scope = ? AND topic = ? AND partition_id = ?",
        (str(target), now, scope, topic, partition),
    )
    yield audit_move(audit, at=now, scope=scope, topic=topic, partition=partition, from_offset=current_text,
                     to_offset=str(target), skipped=0)
    return RewindReport(scope, topic, partition, current_text, str(target), now)


async def rewind_checkpoint(
    settings: Settings, topic: str, partition: int, *, to_offset: int | None = None, by: int | None = None,
    audit: AuditEntry = _REWIND,
) -> RewindReport:
    """The explicit operator rewind of one partition (``checkpoint reset`` moves several at once).

    Raises:
        UsageError: the topic is not consumed by an enabled plane, or see :func:`rewind_program`.
        StoreError: a ``ctxplane run`` works on the store (stop it first), or the store fails.
    """
    if topic not in settings.topics():
        raise UsageError(f"topic {topic} is not consumed by any enabled plane; nothing to rewind")
    scope = scope_of(settings)
    async with exclusive_store(settings, "rewind a checkpoint") as store:
        report = await store.write(
            rewind_program(scope, topic, partition, to_offset=to_offset, by=by, now=now_utc(), audit=audit))
    log.warning("checkpoint rewound", scope=scope, topic=topic, partition=partition,
                from_offset=report.from_offset, to_offset=report.to_offset)
    return report
