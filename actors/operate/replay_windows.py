"""Replay windows: a manifest's partitions resolved against the bus and the store's checkpoints, then
read and classified into group commits (docs/operations.md §Replay).

Reading mirrors the partition actor: the live intake rules plus the manifest's pins (a mismatching
event becomes a ``REPLAY_PINS_MISMATCH`` verdict), the fast classifier, and the same lateness rule,
so a replay of a whole partition produces the verdicts a live pass would. Applying the groups is
``ctxplane.actors.operate.replay``'s part.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from anyio.streams.memory import MemoryObjectSendStream

from ctxplane.actors.operate.replay_manifest import ReplayManifest
from ctxplane.config.settings import Settings
from ctxplane.contracts.classes import Plane
from ctxplane.contracts.intake import IntakeRules, SourceRef, Verdict
from ctxplane.contracts.intake_fast import FastIntake
from ctxplane.contracts.join import CheckpointRow
from ctxplane.contracts.lateness import fold_lateness
from ctxplane.contracts.messages import ApplyBatch
from ctxplane.contracts.timestamps import parse_ts_us
from ctxplane.runtime.bus import EventBus
from ctxplane.runtime.exceptions import UsageError

__all__ = ("ReplayWindow", "intake_rules", "read_windows", "resolve_windows")


@dataclass(frozen=True, slots=True)
class ReplayWindow:
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


def intake_rules(settings: Settings, plane: Plane, features: Any, pins: Mapping[str, Any] | None) -> IntakeRules:
    """The live intake rules of ``plane`` (as ``ctxplane.actors.app.tree`` builds them) plus the replay pins."""
    run = settings.run.platform_run_id
    if plane is Plane.JOIN:
        return IntakeRules(Plane.JOIN, frozenset(settings.join_plane.topics), required_run=run, replay_pins=pins)
    return IntakeRules(
        Plane.FEATURES, frozenset(settings.features.topics), required_run=run, replay_pins=pins,
        feature_key_types=features.key_types if features is not None else (),
        parse_amount=features.parse_amount if features is not None else None,
    )


async def resolve_windows(
    settings: Settings, manifest: ReplayManifest, bus: EventBus, checkpoints: Mapping[tuple[str, int], CheckpointRow]
) -> list[ReplayWindow]:
    """Every manifest partition's window, in manifest order, with its checkpoint and the lateness
    watermark it starts with.

    Raises:
        UsageError: a partition does not exist on the bus.
    """
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
            windows.append(ReplayWindow(
                plane, entry.topic, part.partition, start, max(stop, start), checkpoint, contiguous, watermark,
                int(lateness_s * 1_000_000),
            ))
    return windows


async def read_windows(
    send: MemoryObjectSendStream[list[ApplyBatch]],
    bus: EventBus,
    windows: Sequence[ReplayWindow],
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
