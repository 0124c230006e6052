"""The drill controller: failure drills against a running supervisor (ops/RUNBOOK.md §2).

``ctxplane drill NAME`` (``actors/app/cli_drill.py``) drives each drill from outside, over the query
socket; what it cannot do from outside — crash an actor, rewind a checkpoint *in the running
process* — it asks this controller to do, with a ``drill`` request::

    {"op": "drill", "action": "status"}
    {"op": "drill", "action": "inject", "target": "partition" | "store-writer",
     "topic": T?, "partition": P?}
    {"op": "drill", "action": "rewind", "by": N, "topic": T?, "partition": P?}

Gates, in order (each failure is an error answer, never an exception):

1. ``drills.enabled: true`` in the process's config, else ``DRILLS_DISABLED``. With drills off the
   process has no controller at all, so no fault can be injected;
2. the request came over the Unix socket or loopback TCP, or the endpoint requires the auth token
   (which the socket server has then checked), else ``FORBIDDEN``;
3. a well-formed request (``INVALID_REQUEST`` naming the field otherwise).

The controller is the root supervisor's last child, so it starts after everything it acts on and a
restart of anything before it (``rest_for_one``) restarts it too: it holds no state worth keeping.

Actions:

- ``status``: restart counts per actor (from the registry), per-supervisor statistics and restart
  intensity, escalations (from the metrics), store availability, the process RSS;
- ``inject``: one :class:`~ctxplane.runtime.kernel.faults.InjectFault` to the target (a partition actor — the
  named one or the first — or the store-writer). It returns at once; the caller watches ``status``
  for the restart (or escalation), since the crash may restart this controller too;
- ``rewind``: for each selected partition (one, a topic's, or all): stop its actor gracefully (it
  waits for its in-flight acks, so no batch commits behind the rewind), have the store-writer run
  the audited rewind program between two group commits, start the actor again. It re-reads the
  ``N`` records from the rewound checkpoint: they are duplicates, and state must not change.
  File bus with static assignment only (with leases, the assigner owns the partition actors).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Final

import anyio
import structlog

from ctxplane.actors.ingest.store_writer import RunWrite, WriteResult
from ctxplane.actors.operate.checkpoint_audit import AuditEntry
from ctxplane.config.settings import QuerySettings, secret_value
from ctxplane.contracts.answers import ErrorCode, Status
from ctxplane.contracts.timestamps import now_utc
from ctxplane.runtime.endpoint import parse_listen
from ctxplane.runtime.exceptions import (
    ActorFailed,
    ActorUnavailable,
    AskTimeout,
    CtxplaneError,
    SupervisorStopped,
)
from ctxplane.runtime.kernel import Actor, ActorContext, ActorRef, ChildSpec, Supervisor
from ctxplane.runtime.kernel.faults import InjectFault
from ctxplane.runtime.server import error_response, is_loopback

if TYPE_CHECKING:
    from ctxplane.actors.resources import AppContext

__all__ = ("DRILLS", "DrillCommand", "DrillController", "DrillGate", "drill_controller_spec", "parse_drill_request")

log = structlog.get_logger("ctxplane.drills")

DRILLS: Final = "drills"
ACTIONS: Final = ("status", "inject", "rewind")
TARGETS: Final = ("partition", "store-writer")
# The shortest ask to the controller. A rewind (stop partition actors after their in-flight acks,
# rewind, restart) takes longer than a query, so the CLI sends drill requests with a long deadline;
# with a short one the controller still finishes the rewind, the caller just does not see it.
_MIN_ASK_TIMEOUT_S = 0.05
_MAX_INT = 2**31 - 1
# How long an inject may wait for room in the target's mailbox (a store-writer under load).
_INJECT_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True)
class DrillCommand:
    """Query actor -> drill controller: one validated ``drill`` request."""

    action: str
    target: str | None = None
    topic: str | None = None
    partition: int | None = None
    by: int | None = None
    label: str = "drill"


def parse_drill_request(request: Mapping[str, Any]) -> DrillCommand | str:
    """Validate a ``drill`` request (pure). Returns the command, or a detail naming the bad field."""
    action = request.get("action")
    if not isinstance(action, str) or action not in ACTIONS:
        return f"action must be one of {', '.join(ACTIONS)}"
    topic = request.get("topic")
    if topic is not None and (not isinstance(topic, str) or not topic or len(topic) > 256):
        return "topic must be a non-empty string (at most 256 characters)"
    partition = request.get("partition")
    if partition is not None and (type(partition) is not int or not 0 <= partition <= _MAX_INT):
        return "partition must be a non-negative integer"
    if partition is not None and topic is None:
        return "partition needs topic"
    target = request.get("target")
    by = request.get("by")
    if action == "inject":
        if target not in TARGETS:
            return f"target must be one of {', '.join(TARGETS)}"
        if target == "store-writer" and topic is not None:
            return "topic/partition select a partition target only"
    elif target is not None:
        return f"target is only for action inject (got action {action})"
    if action == "rewind":
        if type(by) is not int or not 1 <= by <= _MAX_INT:
            return "by must be a positive integer"
    elif by is not None:
        return f"by is only for action rewind (got action {action})"
    label = request.get("request_id")
    return DrillCommand(
        action, target=target, topic=topic, partition=partition, by=by,
        label=f"drill {action}" + (f" {label}" if isinstance(label, str) and len(label) <= 64 else ""),
    )


def process_rss_bytes() -> int | None:
    """This process's resident set size (Linux ``/proc``); None where that is not available."""
    try:
        with open("/proc/self/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@dataclass(slots=True)
class DrillGate:
    """The ``drill`` op of the query endpoint: the gates, then an ask to the controller.

    Runs in the supervisor's process (query workers forward the op to the query actor), on the
    loop of the actors; ``controller_running`` is set by the controller while it runs.
    """

    enabled: bool
    local_or_authenticated: bool
    controller: ActorRef
    controller_running: bool = field(default=False)

    @classmethod
    def for_settings(cls, enabled: bool, query: QuerySettings, controller: ActorRef) -> DrillGate:
        kind, host, _port = parse_listen(query.listen)
        local = kind == "unix" or is_loopback(host)
        # A non-loopback endpoint only runs with an auth token, which the socket server checks on
        # every request before any op sees it; the flag is kept explicit so the rule holds even if
        # that server rule ever changes.
        return cls(enabled, local or bool(secret_value(query.auth_token)), controller)

    async def handle(self, request: dict[str, Any], deadline_s: float) -> dict[str, Any]:
        request_id = request.get("request_id")
        if not self.enabled:
            return error_response(ErrorCode.DRILLS_DISABLED, "drills are disabled in this process (set drills.enabled: true in its config)",
                request_id=request_id,
            )
        if not self.local_or_authenticated:
            return error_response(ErrorCode.FORBIDDEN, "drills are accepted only over a Unix socket, loopback TCP, or with the auth token",
                request_id=request_id,
            )
        command = parse_drill_request(request)
        if isinstance(command, str):
            return error_response(ErrorCode.INVALID_REQUEST, command, request_id=request_id)
        if not self.controller_running:
            return error_response(ErrorCode.UNAVAILABLE, "the drill controller is not running (restarting?)",
                                  request_id=request_id, retryable=True)
        try:
            answer = await self.controller.ask(command, timeout=max(_MIN_ASK_TIMEOUT_S, deadline_s * 0.9))
        except (AskTimeout, ActorUnavailable, ActorFailed) as exc:
            return error_response(ErrorCode.UNAVAILABLE, f"drill controller: {exc}", request_id=request_id, retryable=True)
        return {"status": Status.OK, "request_id": request_id, "drill": answer}


class DrillController(Actor):
    """Acts on :class:`DrillCommand` asks; see the module docstring."""

    def __init__(
        self,
        app: AppContext,
        *,
        gate: DrillGate,
        store_writer: ActorRef,
        partition_spec: Callable[[str, int], ChildSpec],
    ) -> None:
        self._app = app
        self._gate = gate
        self._store_writer = store_writer
        self._partition_spec = partition_spec

    async def started(self, ctx: ActorContext) -> None:
        self._gate.controller_running = True
        log.warning("drill controller running: failure drills are enabled in this process")

    async def stopping(self) -> None:
        self._gate.controller_running = False

    async def receive(self, message: object) -> object:
        if type(message) is not DrillCommand:
            return {"error": f"not a drill command: {type(message).__name__}"}
        if message.action == "status":
            return self.status()
        if message.action == "inject":
            return await self._inject(message)
        return await self._rewind(message)

    # -- status ---------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        app = self._app
        supervisors: dict[str, Any] = {}
        for name, sup in sorted(app.supervisors.items()):
            stats = sup.statistics()
            supervisors[name] = {
                "state": sup.state.value if sup.state is not None else None,
                "restarts": stats.restarts, "running": list(stats.running),
                "intensity": {"max_restarts": sup.intensity.max_restarts, "period_s": sup.intensity.period},
            }
        return {
            "pid": os.getpid(),
            "rss_bytes": process_rss_bytes(),
            "store_available": bool(getattr(app.observer, "store_is_available", True)),
            "actors": [{"name": a.name, "state": a.state.value, "restarts": a.restarts}
                       for a in app.registry.snapshot()],
            "supervisors": supervisors,
            "escalations": self._escalations(),
            "partitions": sorted(self._partition_spec(t, p).name for t, p in app.partitions),
        }

    def _escalations(self) -> dict[str, int]:
        """Escalations per supervisor since the process started (the metrics count them; a
        supervisor that escalated is replaced by a new instance, so its own statistics reset)."""
        registry = getattr(self._app.observer, "registry", None)
        if registry is None:
            return {}
        out = {}
        for name in ("root", "partitions"):
            value = registry.get_sample_value("ctxplane_supervisor_escalations_total", {"supervisor": name})
            out[name] = int(value or 0)
        return out

    # -- inject ---------------------------------------------------------------------------------

    async def _inject(self, command: DrillCommand) -> dict[str, Any]:
        if command.target == "store-writer":
            ref = self._store_writer
        else:
            names = self._select(command)
            if isinstance(names, str):
                return {"error": names}
            ref = self._app.registry.ref(names[0][2])
        before = _restarts(self._app, ref.name)
        # Non-blocking puts, retried for a bounded time: the answer comes before the caller's
        # deadline, and "not injected" is certain (a cancelled blocking put may have delivered),
        # so a retry can never double the fault.
        deadline = anyio.current_time() + _INJECT_TIMEOUT_S
        try:
            while not ref.try_tell(InjectFault(command.label)):
                if anyio.current_time() >= deadline:
                    return {"error": f"{ref.name} is busy (mailbox full for {_INJECT_TIMEOUT_S} s); not injected, retry"}
                await anyio.sleep(0.01)  # room appears at the target's next receive
        except ActorUnavailable as exc:
            return {"error": f"{ref.name} is not running: {exc}"}
        log.warning("fault injected", actor=ref.name, label=command.label)
        return {"injected": ref.name, "restarts_before": before}

    # -- rewind ---------------------------------------------------------------------------------

    def _select(self, command: DrillCommand) -> list[tuple[str, int, str]] | str:
        """The (topic, partition, actor name) triples a command selects, or why none."""
        keys = sorted(self._app.partitions)
        if command.topic is not None:
            keys = [k for k in keys if k[0] == command.topic and command.partition in (None, k[1])]
        if not keys:
            where = command.topic if command.partition is None else f"{command.topic} partition {command.partition}"
            return f"no consumed partition matches {where}"
        return [(t, p, self._partition_spec(t, p).name) for t, p in keys]

    async def _rewind(self, command: DrillCommand) -> dict[str, Any]:
        """Stop, rewind, restart each selected partition; see the module docstring."""
        from ctxplane.actors.operate.checkpoint_rewind import (
            rewind_program,  # the audited operator rewind, run in-process
        )

        assert command.by is not None
        selected = self._select(command)
        if isinstance(selected, str):
            return {"error": selected}
        partitions = self._app.supervisors.get("partitions")
        if partitions is None or "discovery" not in partitions.statistics().running:
            return {"error": "rewind drills need the file bus with static partition assignment "
                             "(with leases or Kinesis the assigner owns the partition actors)"}
        rewound: list[dict[str, Any]] = []
        errors: list[str] = []
        started = anyio.current_time()
        for topic, partition, name in selected:
            # Step 1: stop the actor gracefully, so nothing it read commits behind the rewind.
            try:
                await partitions.terminate_child(name)
            except KeyError:
                errors.append(f"{name} is not running")
                continue
            except SupervisorStopped as exc:
                return {"error": str(exc), "rewound": rewound}
            try:
                # Step 2: the audited rewind, serialised with the group commits.
                result = await self._store_writer.ask(
                    RunWrite(partial(self._rewind_program, rewind_program, topic, partition, command.by, command.label),
                             label=f"{command.label}: rewind {name} by {command.by}"),
                    timeout=60.0,
                )
                assert isinstance(result, WriteResult)
                if result.ok:
                    report = result.value
                    rewound.append({"topic": topic, "partition": partition, "from_offset": report.from_offset,
                                    "to_offset": report.to_offset})
                else:
                    errors.append(f"{name}: {result.error}")
            except (AskTimeout, ActorUnavailable, ActorFailed) as exc:
                errors.append(f"{name}: the store-writer did not run the rewind: {exc}")
            finally:
                # Step 3: start it again; it resumes at the (rewound) committed checkpoint.
                with anyio.CancelScope(shield=True):
                    await self._restart(partitions, topic, partition, name, errors)
        log.warning("checkpoints rewound by a drill", rewound=rewound, errors=errors, label=command.label)
        return {"rewound": rewound, "errors": errors, "seconds": round(anyio.current_time() - started, 3)}

    def _rewind_program(self, build: Any, topic: str, partition: int, by: int, label: str) -> Any:
        return build(self._app.scope, topic, partition, to_offset=None, by=by, now=now_utc(),
                     audit=AuditEntry("drill", reason=label))

    async def _restart(self, partitions: Supervisor, topic: str, partition: int, name: str, errors: list[str]) -> None:
        try:
            await partitions.start_child(self._partition_spec(topic, partition))
        except CtxplaneError as exc:  # name taken, supervisor stopping, or its start failed (store down)
            # Forget the partition: the discovery actor starts it again on its next round (~1 s).
            plane = self._app.partitions.pop((topic, partition), None)
            errors.append(f"{name}: not restarted now ({exc}); left to discovery (plane {plane})")


def _restarts(app: AppContext, name: str) -> int:
    for row in app.registry.snapshot():
        if row.name == name:
            return row.restarts
    return 0


def drill_controller_spec(
    app: AppContext, gate: DrillGate, *, store_writer: ActorRef, partition_spec: Callable[[str, int], ChildSpec]
) -> ChildSpec:
    """The controller as the root supervisor's last child (only when ``drills.enabled``)."""
    return ChildSpec(
        DRILLS,
        lambda: DrillController(app, gate=gate, store_writer=store_writer, partition_spec=partition_spec),
        mailbox_capacity=8,
        # A rewind in progress restarts partition actors; give it time to put them back.
        shutdown_timeout=30.0,
    )
