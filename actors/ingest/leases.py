"""Partition assignment: which partitions this process runs — leases for scale-out, lineage gating
for resharded Kinesis streams.

The partition assigner is the first child of the partitions supervisor (it replaces the discovery
actor whenever the bus is Kinesis or leases are on). Every round it:

1. discovers partitions (topic → partitions, with Kinesis shard lineage); known partitions are
   never forgotten, so a failed listing cannot make the process drop work;
2. gates children: a partition with parent shards becomes *eligible* only once every parent's
   **committed** checkpoint is drained (``ctxplane.runtime.bus.kinesis.is_drained``: it reached the closed
   parent's ``EndingSequenceNumber``). That is durable and shared, so parent-before-child holds
   across restarts and across processes; eligibility, once seen, is kept;
3. with leases (``leased`` mode): runs one lease transaction (:func:`lease_round_program`) —
   renew what it holds, take free or expired leases up to its share ``ceil(eligible / live
   owners)``, steal at most one lease per round from the busiest owner when that owner holds more
   than the share or two more than us — and sets the desired set to the leases held; without
   leases (``local`` mode) every eligible partition is desired;
4. a separate reconcile task starts a partition actor per desired partition and terminates those
   no longer desired (a lost lease) or desired under a new epoch. Starting and stopping never
   delays the next renewal.

Leases (``partition_leases``, migration 0003; its statements in actors/tables/leases.py) live in
PostgreSQL and use the database clock. Every ownership change bumps the epoch; each
partition-actor incarnation is bound to one epoch through
:class:`~ctxplane.actors.ingest.fencing.LeasedWriter`, and every commit is fenced on it — so safety
never depends on clocks or timing, only liveness does. A process that cannot renew for ``duration_s`` (store
down, paused) stops its partition actors itself; anything they still send is fenced anyway. On a
graceful stop, the partition actors (newer children) stop first and commit their in-flight
batches; then the assigner releases its leases (epoch bumped, owner cleared), so another process
can take them at once instead of waiting for expiry.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import anyio
import structlog
from anyio.abc import TaskStatus

from ctxplane.actors.ingest.fencing import LeasedWriter
from ctxplane.actors.tables.checkpoints import checkpoints_program
from ctxplane.actors.tables.leases import (
    DB_NOW_US,
    db_now_us_program,
    idle_timeout_program,
    insert_lease,
    lease_rows_program,
    renew_lease,
    take_lease,
)
from ctxplane.config.settings import Settings
from ctxplane.contracts.timestamps import format_ts_us
from ctxplane.runtime.bus.kinesis import is_drained
from ctxplane.runtime.exceptions import (
    ActorNameTaken,
    ActorUnavailable,
    BusError,
    StoreError,
    SupervisorStopped,
    UsageError,
)
from ctxplane.runtime.kernel import Actor, ActorContext, ChildSpec
from ctxplane.runtime.store import Program, StoreBackend

__all__ = (
    "ASSIGNER",
    "AssignmentMode",
    "LeaseBook",
    "PartitionAssigner",
    "RoundResult",
    "assigner_spec",
    "assignment_mode",
    "lease_owner",
    "lease_round_program",
    "release_program",
)

log = structlog.get_logger("ctxplane.leases")

ASSIGNER: Final = "partition-assigner"
AssignmentMode = Literal["static", "local", "leased"]
Key = tuple[str, int]  # (topic, partition)

# How often partitions are re-listed without leases (as the discovery actor did).
_LOCAL_INTERVAL_S: Final = 1.0


def assignment_mode(settings: Settings) -> AssignmentMode:
    """``leased`` when ``leases.enabled`` or (PostgreSQL store and Kinesis bus); else ``local`` for
    Kinesis (one process, lineage gating) and ``static`` for the file bus (the discovery actor).

    Raises:
        UsageError: leases are enabled on a SQLite store (SQLite deployments are single-process).
    """
    postgres = settings.store.backend == "postgresql"
    if settings.leases.enabled and not postgres:
        raise UsageError(
            "leases.enabled: partition leases need a PostgreSQL store (SQLite deployments are single-process)"
        )
    if settings.leases.enabled or (postgres and settings.bus.kind == "kinesis"):
        return "leased"
    return "local" if settings.bus.kind == "kinesis" else "static"


def lease_owner(settings: Settings) -> str:
    return settings.leases.owner or f"{socket.gethostname()}:{os.getpid()}"


# -- lease programs (pure: run by either backend in one write transaction) ------------------------


@dataclass(slots=True)
class _Lease:
    owner: str
    epoch: int
    expires: str


@dataclass(frozen=True, slots=True)
class RoundResult:
    """What one lease round decided.

    Attributes:
        held: every lease this owner holds after the round: (topic, partition) → epoch.
        acquired: leases taken this round (free, expired, re-taken or stolen), with new epochs.
        lost: leases held before the round (per its ``held`` argument) and not any more.
        stolen: the one lease stolen this round, if any.
        owners: live owners counted (this one included).
        share: ``ceil(eligible / owners)``.
    """

    held: dict[Key, int]
    acquired: tuple[Key, ...]
    lost: tuple[Key, ...]
    stolen: Key | None
    owners: int
    share: int


def lease_round_program(
    *,
    scope: str,
    owner: str,
    eligible: Sequence[Key],
    held: Mapping[Key, int],
    duration_us: int,
    now_sql: str = DB_NOW_US,
) -> Program[RoundResult]:
    """One lease round (see the module docstring), in the caller's write transaction.

    Rows are touched in (topic, partition) order and every change is conditional on the owner and
    epoch read (``UPDATE ... WHERE owner = ? AND epoch = ? RETURNING``), so two processes racing
    for one lease cannot both win: under READ COMMITTED the loser's UPDATE re-checks the committed
    row and matches nothing. A lease row is never deleted.
    """
    now_us = yield from db_now_us_program(now_sql)
    now, expires = format_ts_us(now_us), format_ts_us(now_us + duration_us)
    table = {key: _Lease(*row) for key, row in (yield from lease_rows_program(scope)).items()}
    mine: dict[Key, int] = {}
    lost: list[Key] = []
    # Renew what we hold, exactly at the epoch we hold it.
    for key in sorted(held):
        lease = table.get(key)
        if lease is not None and lease.owner == owner and lease.epoch == held[key]:
            if (yield from renew_lease(scope, key, owner=owner, epoch=held[key], expires=expires)):
                mine[key] = held[key]
                lease.expires = expires
                continue
        lost.append(key)
    wanted = set(eligible)
    live_counts: Counter[str] = Counter(
        lease.owner for key, lease in table.items()
        if key in wanted and lease.owner and lease.owner != owner and lease.expires > now
    )
    owners = len(live_counts) + 1
    share = math.ceil(len(wanted) / owners) if wanted else 0
    acquired: list[Key] = []
    # Take free, released or expired leases (and rows of ours this book does not know: a previous
    # incarnation's — re-taken with a new epoch), up to the share.
    for key in sorted(wanted):
        if len(mine) >= share:
            break
        if key in mine:
            continue
        lease = table.get(key)
        if lease is None:
            epoch = yield from insert_lease(scope, key, owner=owner, expires=expires)
        elif lease.owner in ("", owner) or lease.expires <= now:
            epoch = yield from take_lease(scope, key, from_owner=lease.owner, epoch=lease.epoch, to_owner=owner,
                                          expires=expires)
        else:
            continue
        if epoch is not None:
            mine[key] = epoch
            acquired.append(key)
    # Steal at most one lease per round from the busiest live owner, when it holds more than the
    # share or two more than we do (so 4 partitions over 3 owners settle at 2/1/1, not 2/2/0).
    stolen: Key | None = None
    if len(mine) < share and live_counts:
        victim, count = min(live_counts.items(), key=lambda item: (-item[1], item[0]))
        if count > share or count >= len(mine) + 2:
            key = max(k for k, lease in table.items() if lease.owner == victim and k in wanted and lease.expires > now)
            lease = table[key]
            epoch = yield from take_lease(scope, key, from_owner=victim, epoch=lease.epoch, to_owner=owner,
                                          expires=expires)
            if epoch is not None:
                mine[key] = epoch
                acquired.append(key)
                stolen = key
    return RoundResult(mine, tuple(acquired), tuple(lost), stolen, owners, share)


def release_program(
    *, scope: str, owner: str, held: Mapping[Key, int], now_sql: str = DB_NOW_US
) -> Program[list[Key]]:
    """Release ``held`` leases (owner cleared, expired now, epoch bumped so nothing read under them
    can commit any more). Returns the keys actually released."""
    now = format_ts_us((yield from db_now_us_program(now_sql)))
    released = []
    for key in sorted(held):
        epoch = yield from take_lease(scope, key, from_owner=owner, epoch=held[key], to_owner="", expires=now)
        if epoch is not None:
            released.append(key)
    return released


# -- the actor ----------------------------------------------------------------------------------


@dataclass
class LeaseBook:
    """The assigner's state that must outlive an assigner incarnation (it lives as long as its
    partitions supervisor): leases held, partitions known and eligible, actors running."""

    held: dict[Key, int] = field(default_factory=dict)
    known: dict[Key, str] = field(default_factory=dict)  # (topic, partition) -> plane
    parents: dict[Key, tuple[int, ...]] = field(default_factory=dict)
    eligible: set[Key] = field(default_factory=set)
    desired: dict[Key, int | None] = field(default_factory=dict)  # partition -> epoch (None: no lease)
    running: dict[Key, int | None] = field(default_factory=dict)
    last_renewed: float | None = None  # anyio clock of the last successful round


SpecFor = Callable[[str, int, str, Callable[[], Any] | None], ChildSpec]


class PartitionAssigner(Actor):
    """See the module docstring.

    Args:
        settings, bus, store, scope: the process's; ``store`` runs the lease transactions and the
            checkpoint reads of the parent gate.
        supervisor: returns the partitions supervisor (for start_child / terminate_child).
        spec_for: ``(topic, partition, plane, writer_factory)`` → the partition actor's ChildSpec;
            ``writer_factory`` (None without leases) builds the incarnation's LeasedWriter.
        writer: the store-writer's ref (wrapped per incarnation).
        self_ref: returns this assigner's ref (fencing wakes it through its mailbox).
        book: the state shared across incarnations.
        on_partition: called once per newly discovered partition (keeps ``app.partitions``).
    """

    def __init__(
        self,
        *,
        mode: AssignmentMode,
        settings: Settings,
        bus: Any,
        store: StoreBackend,
        scope: str,
        supervisor: Callable[[], Any],
        spec_for: SpecFor,
        writer: Any,
        self_ref: Callable[[], Any],
        book: LeaseBook,
        on_partition: Callable[[str, int, str], None] | None = None,
    ) -> None:
        self._mode = mode
        self._settings = settings
        self._bus = bus
        self._store = store
        self._scope = scope
        self._supervisor = supervisor
        self._spec_for = spec_for
        self._writer = writer
        self._self_ref = self_ref
        self.book = book
        self._on_partition = on_partition
        self._owner = lease_owner(settings)
        leases = settings.leases
        self._interval_s = leases.renew_every_s if mode == "leased" else _LOCAL_INTERVAL_S
        self._duration_us = int(leases.duration_s * 1_000_000)
        self._duration_s = leases.duration_s
        self._changed = anyio.Event()

    async def run(self, ctx: ActorContext, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        log.info("partition assigner started", mode=self._mode, owner=self._owner if self._mode == "leased" else None)
        if self._mode == "leased":
            await self._check_idle_timeout()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._reconcile_forever)
            while True:
                await self._round()
                with anyio.move_on_after(self._interval_s):
                    message = await ctx.mailbox.get()
                    if ctx.is_stop(message):
                        break
            tg.cancel_scope.cancel()
        await self._release()
        await self.stopping()

    async def receive(self, message: object) -> object:  # pragma: no cover - run() handles the mailbox
        return None

    async def _check_idle_timeout(self) -> None:
        """Warn when PostgreSQL would let a paused process keep its locks.

        Every commit locks its lease rows (fencing), so a process frozen mid-transaction (SIGSTOP,
        a VM pause) blocks the take-over of its partitions until its session ends — safe, never
        live. ``idle_in_transaction_session_timeout`` at or below the lease duration (e.g. in the
        DSN: ``?idle_in_transaction_session_timeout=10000``) makes the server end such a session.
        """
        try:
            rows = await self._store.read(idle_timeout_program())
        except StoreError as exc:
            log.warning("cannot read idle_in_transaction_session_timeout", error=str(exc))
            return
        timeout_ms = int(rows[0][0]) if rows else 0
        if timeout_ms == 0 or timeout_ms > self._duration_s * 1000:
            log.warning(
                "idle_in_transaction_session_timeout is off or above the lease duration: a paused process "
                "would delay the take-over of its partitions until it resumes (set it in the DSN, e.g. "
                f"?idle_in_transaction_session_timeout={int(self._duration_s * 1000)})",
                idle_in_transaction_session_timeout_ms=timeout_ms,
            )

    # -- one round ------------------------------------------------------------------------------

    async def _round(self) -> None:
        await self._discover()
        await self._gate()
        book = self.book
        if self._mode != "leased":
            book.desired = {key: None for key in book.eligible}
            self._changed.set()
            return
        try:
            result = await self._store.write(lease_round_program(
                scope=self._scope, owner=self._owner, eligible=sorted(book.eligible), held=dict(book.held),
                duration_us=self._duration_us,
            ))
        except StoreError as exc:
            log.warning("lease round failed", error=str(exc))
            if book.last_renewed is not None and anyio.current_time() - book.last_renewed > self._duration_s:
                # Unrenewed past the lease duration: others may own these partitions now. Stop
                # reading (whatever is still in flight is fenced at commit anyway).
                if book.held:
                    log.warning("leases not renewed within their duration; stopping their partitions",
                                partitions=len(book.held))
                book.held = {}
                book.desired = {}
                self._changed.set()
            return
        book.last_renewed = anyio.current_time()
        for topic, partition in result.lost:
            log.warning("lease lost", topic=topic, partition=partition, epoch=book.held.get((topic, partition)))
        for topic, partition in result.acquired:
            log.info("lease acquired", topic=topic, partition=partition, epoch=result.held[(topic, partition)],
                     stolen=result.stolen == (topic, partition), share=result.share, owners=result.owners)
        book.held = dict(result.held)
        book.desired = dict(result.held)
        self._changed.set()

    async def _discover(self) -> None:
        book = self.book
        shards = getattr(self._bus, "shards", None)  # Kinesis: lineage too
        for topic, plane in self._settings.topics().items():
            try:
                if shards is not None:
                    found = {p: info.parents for p, info in (await shards(topic)).items()}
                else:
                    found = {p: () for p in await self._bus.list_partitions(topic)}
            except (BusError, OSError) as exc:
                log.warning("cannot list partitions", topic=topic, error=str(exc))
                continue
            for partition, parents in found.items():
                key = (topic, partition)
                book.parents[key] = parents
                if key not in book.known:
                    book.known[key] = plane
                    if self._on_partition is not None:
                        self._on_partition(topic, partition, plane)

    async def _gate(self) -> None:
        """Make partitions eligible: parentless ones at once, children once every parent is drained
        per the committed checkpoints."""
        book = self.book
        waiting = [key for key in book.known if key not in book.eligible]
        children = [key for key in waiting if book.parents.get(key)]
        for key in waiting:
            if not book.parents.get(key):
                book.eligible.add(key)
        if not children:
            return
        shards_of = getattr(self._bus, "shards", None)
        try:
            rows = await self._store.read(checkpoints_program(self._scope))
            lineage = {topic: await shards_of(topic) for topic in {k[0] for k in children}} if shards_of else {}
        except (StoreError, BusError, OSError) as exc:
            log.warning("cannot check parent shards", error=str(exc))
            return
        committed = {(row.topic, row.partition): row.next_offset for row in rows}
        for topic, partition in children:
            shards = lineage.get(topic, {})
            pending = [
                parent for parent in book.parents[(topic, partition)]
                # A parent no longer listed has expired from the stream: nothing left to read.
                if parent in shards and not is_drained(shards[parent], committed.get((topic, parent)))
            ]
            if not pending:
                book.eligible.add((topic, partition))
                log.info("child shard released: its parents are drained", topic=topic, partition=partition,
                         parents=list(book.parents[(topic, partition)]))

    # -- starting and stopping partition actors -----------------------------------------------------

    async def _reconcile_forever(self) -> None:
        while True:
            await self._changed.wait()
            self._changed = anyio.Event()
            try:
                await self._reconcile()
            except SupervisorStopped:
                return

    async def _reconcile(self) -> None:
        from ctxplane.actors.ingest.partition import partition_name

        book = self.book
        supervisor = self._supervisor()
        desired = dict(book.desired)
        for key, epoch in sorted(book.running.items()):
            if key in desired and desired[key] == epoch:
                continue
            try:
                await supervisor.terminate_child(partition_name(*key))
            except KeyError:
                pass  # already gone
            del book.running[key]
            log.info("partition stopped", topic=key[0], partition=key[1], epoch=epoch)
        for key, epoch in sorted(desired.items()):
            if key in book.running:
                continue
            writer = None if epoch is None else self._writer_factory(epoch)
            spec = self._spec_for(key[0], key[1], book.known[key], writer)
            try:
                await supervisor.start_child(spec)
            except ActorNameTaken:
                # A previous incarnation still runs under this name: stop it; the next pass starts ours.
                with contextlib.suppress(KeyError):
                    await supervisor.terminate_child(spec.name)
                self._changed.set()
                continue
            except (StoreError, BusError) as exc:
                log.warning("partition did not start; retrying next round", topic=key[0], partition=key[1],
                            error=str(exc))
                continue
            book.running[key] = epoch
            log.info("partition started", topic=key[0], partition=key[1], epoch=epoch)

    def _writer_factory(self, epoch: int) -> Callable[[], LeasedWriter]:
        return lambda: LeasedWriter(self._writer, epoch, self._wake)

    def _wake(self) -> None:
        """A batch was fenced: run a round now rather than at the next renewal."""
        try:
            self._self_ref().try_tell("fenced")
        except ActorUnavailable:
            pass

    async def _release(self) -> None:
        book = self.book
        if self._mode != "leased" or not book.held:
            return
        held, book.held = dict(book.held), {}
        with anyio.move_on_after(5.0, shield=True):
            try:
                released = await self._store.write(
                    release_program(scope=self._scope, owner=self._owner, held=held)
                )
            except StoreError as exc:
                log.warning("could not release leases; they expire on their own", error=str(exc))
                return
            log.info("leases released", partitions=len(released))


def assigner_spec(
    *,
    mode: AssignmentMode,
    app: Any,
    supervisor: Callable[[], Any],
    spec_for: SpecFor,
    writer: Any,
) -> ChildSpec:
    """The ChildSpec of the assigner (one book per partitions-supervisor instance)."""
    book = LeaseBook()

    def on_partition(topic: str, partition: int, plane: str) -> None:
        app.partitions.setdefault((topic, partition), plane)

    return ChildSpec(
        name=ASSIGNER,
        factory=lambda: PartitionAssigner(
            mode=mode, settings=app.settings, bus=app.bus, store=app.read_store, scope=app.scope,
            supervisor=supervisor, spec_for=spec_for, writer=writer,
            self_ref=lambda: app.registry.ref(ASSIGNER), book=book, on_partition=on_partition,
        ),
        mailbox_capacity=8,
        shutdown_timeout=10.0,
    )
