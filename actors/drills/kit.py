"""Client-side tools the drills share: store figures, the endpoint prober, workloads, the clean pass.

A drill (``actors/drills/db_outage.py``, ``offset_rollback.py``, ``conflict_storm.py``,
``actor_fault.py``) runs outside the supervisor it drills, as an operator would: it publishes to the
bus, asks the query endpoint, reads the store, and asks the drill controller only for what cannot
be seen from outside (restart counts, RSS) or done from outside (crash an actor, rewind a live
checkpoint). Its verdict is computed from figures gathered here:

- :class:`StoreFigures`: intake counters, dedupe size, ledger rows, the state and ledger digests
  and the checkpoints, all read in **one** store snapshot, so they describe one moment;
- :func:`clean_pass_digests`: the "clean single pass" — a replay of exactly the live store's
  basis into a fresh SQLite store (a rebuild, docs/operations.md §Rebuild), whose digests the live ones must equal;
- :class:`Endpoint`: requests that survive the endpoint restarting (a crash of the store-writer
  restarts the query actor too), with each answer's latency;
- :func:`drill_workload`: fresh, valid events (a new seed per drill: nothing collides with what the
  bus already holds) stamped with the current time, so nothing is late.
"""

from __future__ import annotations

import itertools
import secrets
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from pydantic import SecretStr

from ctxplane.actors.operate.digest import ledger_digest_program, state_digest_program
from ctxplane.actors.resources import open_bus, scope_of
from ctxplane.actors.tables.checkpoints import checkpoints_program, move_count_program
from ctxplane.actors.tables.dedupe import counter_totals_program, registry_size_program
from ctxplane.actors.tables.ledger import event_reasons_program, reason_counts_program
from ctxplane.config.settings import Settings, StoreSettings, secret_value
from ctxplane.contracts.answers import Status
from ctxplane.contracts.join import CheckpointRow
from ctxplane.runtime.bus import EventBus, partition_key_for
from ctxplane.runtime.client import AsyncClient, QueryEndpointUnavailable
from ctxplane.runtime.exceptions import StoreError
from ctxplane.runtime.store import Program, open_store

__all__ = (
    "POLL_S",
    "Answer",
    "Check",
    "DrillReport",
    "Endpoint",
    "StoreFigures",
    "Workload",
    "caught_up",
    "clean_pass_digests",
    "drill_workload",
    "open_drill_bus",
    "publish",
    "read_figures",
    "reason_counts",
    "wait_caught_up",
)

# How often a drill re-checks a condition it waits for (bus ends vs checkpoints, restarts).
POLL_S = 0.05


# -- verdicts ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Check:
    """One verdict criterion: ``name`` held (``ok``) or not; ``detail`` carries the figures."""

    name: str
    ok: bool
    detail: str


@dataclass(slots=True)
class DrillReport:
    """A drill's outcome: PASS iff every check holds. ``figures`` are what the checks read."""

    drill: str
    figures: dict[str, Any]
    checks: list[Check]

    @property
    def passed(self) -> bool:
        return all(check.ok for check in self.checks)

    def verdict_line(self) -> str:
        failed = [c.name for c in self.checks if not c.ok]
        if not failed:
            return f"drill {self.drill}: PASS ({len(self.checks)} checks)"
        return f"drill {self.drill}: FAIL ({len(failed)} of {len(self.checks)} checks failed: {', '.join(failed)})"

    def render(self) -> str:
        """The verdict line, one ``key=value`` figures line, then one line per check."""
        lines = [self.verdict_line()]
        lines.append("  " + " ".join(f"{k}={_show(v)}" for k, v in self.figures.items() if not isinstance(v, dict | list)))
        lines += [f"  [{'ok' if c.ok else 'FAIL'}] {c.name}: {c.detail}" for c in self.checks]
        return "\n".join(lines)

    def as_json(self) -> dict[str, Any]:
        return {"drill": self.drill, "verdict": "PASS" if self.passed else "FAIL", "figures": self.figures,
                "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in self.checks]}


def _show(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


# -- store figures -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoreFigures:
    """What the store says, read in one snapshot.

    ``counters``: intake counter totals by name (``applied``, ``duplicate``, ``rejected``,
    ``ignored``, ``payload_hash_mismatch``); ``ledger``: ledger rows by reason; ``ledger_keys``:
    the (event_id, reason) pairs in the ledger; ``rewinds``: audit rows in ``checkpoint_rewinds``.
    """

    counters: dict[str, int]
    dedupe: int
    ledger: dict[str, int]
    ledger_keys: frozenset[tuple[str | None, str]]
    state_digest: str
    ledger_digest: str
    checkpoints: tuple[CheckpointRow, ...]
    rewinds: int

    def delta(self, before: StoreFigures, name: str) -> int:
        return self.counters.get(name, 0) - before.counters.get(name, 0)

    def ledger_delta(self, before: StoreFigures) -> dict[str, int]:
        reasons = set(self.ledger) | set(before.ledger)
        out = {r: self.ledger.get(r, 0) - before.ledger.get(r, 0) for r in sorted(reasons)}
        return {r: n for r, n in out.items() if n}


def _figures_program(scope: str) -> Program[StoreFigures]:
    counters = yield from counter_totals_program(scope)
    dedupe = yield from registry_size_program()
    ledger = yield from reason_counts_program()
    keys = yield from event_reasons_program()
    rewinds = yield from move_count_program(scope)
    state = yield from state_digest_program()
    ledger_digest = yield from ledger_digest_program()
    checkpoints = yield from checkpoints_program(scope)
    return StoreFigures(
        counters=counters, dedupe=dedupe, ledger=ledger, ledger_keys=keys,
        state_digest=state, ledger_digest=ledger_digest, checkpoints=checkpoints, rewinds=rewinds,
    )


async def read_figures(settings: Settings) -> StoreFigures:
    """Read :class:`StoreFigures` (one read transaction; the store may be written meanwhile).

    Raises:
        StoreUnavailable: the store cannot be reached.
    """
    async with await open_store(settings.store) as store:
        return await store.read(_figures_program(scope_of(settings)))


async def _checkpoints(settings: Settings) -> dict[tuple[str, int], str]:
    async with await open_store(settings.store) as store:
        rows = await store.read(checkpoints_program(scope_of(settings)))
    return {(row.topic, row.partition): row.next_offset for row in rows}


async def caught_up(settings: Settings, bus: EventBus) -> bool:
    """True when every consumed partition's committed checkpoint is at the bus's end right now.

    Raises:
        StoreError: the store cannot be read.
    """
    checkpoints = await _checkpoints(settings)
    for topic in settings.topics():
        for partition in await bus.list_partitions(topic):
            end = await bus.end_position(topic, partition)
            position = checkpoints.get((topic, partition))
            if position is None:
                if bus.lag("0", end) not in (0, None):
                    return False
            elif bus.compare_positions(position, end) < 0:
                return False
    return True


async def wait_caught_up(settings: Settings, bus: EventBus, *, timeout_s: float) -> float | None:
    """Wait until :func:`caught_up` (store errors count as "not yet"); returns the seconds it took,
    or None at the timeout."""
    started = time.monotonic()
    with anyio.move_on_after(timeout_s):
        while True:
            try:
                if await caught_up(settings, bus):
                    return time.monotonic() - started
            except StoreError:
                pass  # the store is still coming back: keep waiting
            await anyio.sleep(POLL_S)
    return None


# -- the clean single pass -----------------------------------------------------------------------


async def clean_pass_digests(settings: Settings, checkpoints: Sequence[CheckpointRow]) -> tuple[str, str]:
    """The (state, ledger) digests of a clean single pass over exactly ``checkpoints``' basis.

    Replays every consumed partition from offset 0 to its checkpoint into a fresh SQLite store in a
    temporary directory (a rebuild, docs/operations.md §Rebuild) and digests it. Equal digests mean the live
    store holds exactly what one clean pass over the same records gives: nothing lost, nothing
    applied twice, no stray ledger row.

    Raises:
        UsageError: the checkpoints are not file-bus offsets (rebuild supports the file bus only).
    """
    from ctxplane.actors.operate.replay import replay
    from ctxplane.actors.operate.replay_manifest import ReplayManifest

    planes = settings.topics()
    topics: dict[str, list[dict[str, int]]] = {}
    for row in checkpoints:
        if row.topic in planes and int(row.next_offset) > 0:
            topics.setdefault(row.topic, []).append(
                {"partition": row.partition, "from_offset": 0, "to_offset": int(row.next_offset) - 1})
    with tempfile.TemporaryDirectory(prefix="ctxplane-drill-") as tmp:
        dsn = f"sqlite:///{Path(tmp) / 'clean.sqlite'}"
        clean = settings.model_copy(update={"store": StoreSettings(dsn=SecretStr(dsn), synchronous="NORMAL")})
        if topics:
            manifest = ReplayManifest.model_validate(
                {"topics": [{"topic": t, "partitions": parts} for t, parts in sorted(topics.items())]})
            await replay(clean, manifest)
        async with await open_store(clean.store) as store:
            if not topics:
                await store.ensure_schema(auto_migrate=True)
            return await store.read(state_digest_program()), await store.read(ledger_digest_program())


# -- the query endpoint --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    """One request's answer (``None`` when the endpoint could not be reached) and its latency."""

    response: dict[str, Any] | None
    seconds: float
    at: float  # time.monotonic() when the request was sent

    @property
    def reason(self) -> str | None:
        r = self.response or {}
        codes = r.get("reason_codes")
        return codes[0] if codes else r.get("reason") or r.get("code")


class Endpoint:
    """Requests to the running process's query endpoint that survive it restarting.

    A failed connection is reopened at the next request; a request that cannot be delivered is
    answered ``None`` (the caller decides whether that is expected, e.g. during a restart).
    """

    def __init__(self, settings: Settings, *, timeout_s: float = 10.0) -> None:
        self._listen = settings.query.listen
        self._auth = secret_value(settings.query.auth_token)
        self._timeout_s = timeout_s
        self._client: AsyncClient | None = None

    async def request(self, request: dict[str, Any]) -> Answer:
        sent = time.monotonic()
        try:
            if self._client is None:
                self._client = await AsyncClient(self._listen, auth_token=self._auth, timeout_s=self._timeout_s).connect()
            response = await self._client.request(request)
        except (QueryEndpointUnavailable, OSError, TimeoutError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            await self.aclose()
            response = None
        return Answer(response, time.monotonic() - sent, sent)

    async def probe(self) -> None:
        """Connect once and close: raises :class:`QueryEndpointUnavailable` at once when nothing
        listens (no socket file, connection refused)."""
        client = await AsyncClient(self._listen, auth_token=self._auth, timeout_s=self._timeout_s).connect()
        await client.aclose()

    async def drill(self, action: str, *, deadline_ms: int = 5000, **fields: Any) -> dict[str, Any] | None:
        """A ``drill`` request; returns the controller's answer, or None when it could not be had."""
        answer = await self.request({"op": "drill", "action": action, "deadline_ms": deadline_ms, **fields})
        response = answer.response
        if response is None or response.get("status") != Status.OK:
            return None
        return response["drill"]  # type: ignore[no-any-return]

    async def drill_until(self, action: str, *, timeout_s: float, **fields: Any) -> dict[str, Any] | None:
        """:meth:`drill`, retried until it is answered (the controller may be restarting)."""
        with anyio.move_on_after(timeout_s):
            while True:
                answer = await self.drill(action, **fields)
                if answer is not None:
                    return answer
                await anyio.sleep(POLL_S)
        return None

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.aclose()
            except (OSError, anyio.BrokenResourceError):
                pass


# -- workloads -----------------------------------------------------------------------------------


@dataclass(slots=True)
class Workload:
    """Fresh events for one drill: ``items`` are (topic, envelope) in publishing order."""

    seed: int
    items: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    @property
    def event_ids(self) -> set[tuple[str, str]]:
        return {(env["event_type"], env["event_id"]) for _topic, env in self.items}

    def pins(self) -> dict[str, Any]:
        env = self.items[0][1]
        keys = ("platform_run_id", "scenario_run_id", "manifest_fingerprint", "parameter_hash", "scenario_id",
                "seed", "run_id")
        return {k: env[k] for k in keys if k in env}

    def flows(self) -> list[str]:
        return sorted({env["payload"]["flow_id"] for topic, env in self.items
                       if "flow_anchor" in topic and "flow_id" in env["payload"]}, key=_flow_order)

    def chunks(self, n: int) -> list[list[tuple[str, dict[str, Any]]]]:
        size = max(1, -(-len(self.items) // max(1, n)))
        return [self.items[i : i + size] for i in range(0, len(self.items), size)]


def _flow_order(flow: str) -> tuple[int, str]:
    digits = "".join(itertools.takewhile(str.isdigit, flow.removeprefix("flow-")))
    return (int(digits) if digits else 0, flow)


def drill_workload(settings: Settings, events: int, *, seed: int | None = None, payload_bytes: int = 0) -> Workload:
    """About ``events`` valid events (5 per flow: arrival, entities, anchor, two traffic events)
    for the planes the config enables, under a fresh seed; ``payload_bytes`` pads every payload
    with a filler field that long (bigger events: memory under a backlog shows in megabytes).

    Events are ordered by time across topics (so any prefix is a set of whole flows, and publishing
    in chunks spreads every topic over the whole drill) and re-stamped one microsecond apart from
    now on: a drill's events are never late against what the bus held before, and the next drill's
    are never late against this one's (the demo generator spaces flows one second apart).
    """
    from ctxplane.actors.operate.demo_workload import generate
    from ctxplane.contracts.timestamps import format_ts_us

    seed = seed if seed is not None else secrets.randbelow(2**31) + 1000
    flows = max(1, -(-events // 5))
    run = settings.run.platform_run_id or "platform_20260207T000000Z"
    consumed = settings.topics()
    by_topic = generate(flows, seed=seed, platform_run_id=run, conflicts=0, incomplete=0)
    ordered = sorted(((topic, env) for topic, envs in by_topic.items() if topic in consumed for env in envs),
                     key=lambda item: item[1]["ts_utc"])
    now_us = int(time.time() * 1_000_000)
    filler = {"drill_filler": "x" * payload_bytes} if payload_bytes else {}
    items = [(topic, {**env, "ts_utc": format_ts_us(now_us + k), "emitted_at_utc": format_ts_us(now_us + k),
                      "payload": {**env["payload"], **filler}})
             for k, (topic, env) in enumerate(ordered)]
    return Workload(seed, items)


async def publish(bus: EventBus, items: Iterable[tuple[str, dict[str, Any]]]) -> int:
    """Publish (topic, envelope) pairs, routed like ``ctxplane bus publish``; returns how many."""
    by_topic: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for topic, env in items:
        by_topic.setdefault(topic, []).append((partition_key_for(env, None), env))
    for topic, pairs in by_topic.items():
        await bus.publish_many(topic, pairs)
    return sum(len(pairs) for pairs in by_topic.values())


def reason_counts(answers: Iterable[Answer]) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for answer in answers:
        counts[answer.reason or ("NO_ANSWER" if answer.response is None else "?")] += 1
    return dict(sorted(counts.items()))


def open_drill_bus(settings: Settings) -> EventBus:
    return open_bus(settings)
