"""``ctxplane replay`` and rebuild: apply exactly a manifest's window (docs/operations.md §Replay,
§Rebuild).

:func:`replay` resolves and reads the manifest's windows (``ctxplane.actors.operate.replay_windows``:
the live intake rules plus the manifest's pins, so a mismatching event becomes a
``REPLAY_PINS_MISMATCH`` ledger row) and applies the verdicts through the live
:func:`~ctxplane.actors.ingest.apply.apply_program` — same dedupe, same effects, same counters,
effects and checkpoint in one transaction per group commit. Checkpoints move forward only; and a
window that starts *past* a partition's committed checkpoint leaves that checkpoint as it was (in
the same transaction), because advancing it would silently skip the records in the gap for the
live consumer. Finally the replay is recorded in ``replays`` with the applied basis.

Rebuild = a fresh store + a replay of every partition up to a basis
(:func:`~ctxplane.actors.operate.replay_manifest.manifest_for_checkpoints` writes that manifest from
a store's checkpoints). Effects are commutative and deduplicated, so the rebuilt store has the live
store's state digest.

A replay refuses while a ``ctxplane run`` works on the store (its lock file on SQLite, its live
partition leases on PostgreSQL: ``ctxplane.actors.operate.exclusive``), since two writers would
interleave checkpoints.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import anyio
import structlog

from ctxplane.actors.ingest.apply import ApplyOutcome, apply_program
from ctxplane.actors.ingest.isolate import write_isolating
from ctxplane.actors.operate.exclusive import exclusive_store
from ctxplane.actors.operate.replay_manifest import ReplayManifest, replay_id
from ctxplane.actors.operate.replay_windows import intake_rules, read_windows, resolve_windows
from ctxplane.actors.operate.reporting import WorkReporter
from ctxplane.actors.resources import open_bus, scope_of, tune_gc_for_ingest
from ctxplane.actors.tables.checkpoints import restore_checkpoint
from ctxplane.actors.tables.features import FeatureWriter
from ctxplane.actors.tables.reads import basis_program, checkpoints_program
from ctxplane.actors.tables.replays import record_replay
from ctxplane.config.settings import Settings
from ctxplane.contracts.canonical import canonical_json, digest
from ctxplane.contracts.classes import Plane
from ctxplane.contracts.join import CheckpointRow
from ctxplane.contracts.messages import ApplyBatch
from ctxplane.contracts.timestamps import now_utc
from ctxplane.runtime.exceptions import Interrupted, UsageError
from ctxplane.runtime.signals import StopRequest
from ctxplane.runtime.store import Program

__all__ = ("REPLAY_TOPIC_NOT_ALLOWED", "ReplayReport", "replay", "replay_group_program")


log = structlog.get_logger("ctxplane.replay")

#: The refusal code for a manifest topic that no enabled plane consumes (the origin's
#: ``CSFB_REPLAY_TOPIC_NOT_ALLOWED``).
REPLAY_TOPIC_NOT_ALLOWED = "REPLAY_TOPIC_NOT_ALLOWED"

# Group commits handed from the reader/classifier to the writer: one being written while the next
# is classified. Classification holds the GIL, but sqlite3 releases it inside each statement, so
# the two overlap; a deeper queue only holds more memory (a group is ~20k decoded events).
_PIPELINE_DEPTH = 1


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
        yield restore_checkpoint(key, held[key])
    return outcome


def _record_program(
    rid: str, manifest: ReplayManifest, *, started_at: str, events: int, counts: Mapping[str, int], scope: str,
    planes: tuple[str, ...],
) -> Program[tuple[dict[str, dict[str, Any]], str]]:
    """Read the applied basis of the replayed planes and record the replay, in one transaction."""
    bases = yield from basis_program(scope, planes)
    basis_digest = digest({plane: basis["basis_digest"] for plane, basis in bases.items()})
    yield record_replay(
        rid, manifest_json=canonical_json(manifest.canonical()).decode(), started_at=started_at,
        finished_at=now_utc(), events=events, applied=counts.get("applied", 0),
        duplicates=counts.get("duplicate", 0), basis_json=canonical_json(bases).decode(), basis_digest=basis_digest,
    )
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
        manifest: a validated manifest (:func:`~ctxplane.actors.operate.replay_manifest.load_manifest`).
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
    rules = {Plane(plane): intake_rules(settings, Plane(plane), feature_plane, pins) for plane in touched}
    async with AsyncExitStack() as stack:
        store = await stack.enter_async_context(exclusive_store(settings, "replay", endpoint=False))
        bus = open_bus(settings)
        stack.push_async_callback(bus.aclose)
        checkpoints = {(cp.topic, cp.partition): cp for cp in await store.read(checkpoints_program(scope))}
        windows = await resolve_windows(settings, manifest, bus, checkpoints)
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
                    await read_windows(
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
