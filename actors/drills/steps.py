"""The steps every failure drill shares (ops/RUNBOOK.md §2), and the invariant its verdict ends with.

Each drill: gather figures before, cause the failure under load, watch the process through it,
restore, wait for recovery, gather figures after, then judge. Judging is pure (``judge_*``): the
same figures always give the same verdict, and the figures are printed with it. The invariant
behind every verdict is the one ops/RUNBOOK.md §2 states: the state digest equals a clean single
pass over the same events, every re-delivery is counted as a duplicate, nothing unexplained is in
the ledger.
"""

from __future__ import annotations

from typing import Any

from ctxplane.actors.drills.kit import Check, Endpoint, StoreFigures, clean_pass_digests, read_figures, wait_caught_up
from ctxplane.config.settings import Settings
from ctxplane.contracts.answers import ErrorCode
from ctxplane.runtime.bus import EventBus
from ctxplane.runtime.client import QueryEndpointUnavailable
from ctxplane.runtime.exceptions import CtxplaneError, UsageError

__all__ = (
    "ANNOTATIONS",
    "clean_pass_match",
    "controller_status",
    "digest_check",
    "escalation_delta",
    "figures_when_caught_up",
    "restart_delta",
    "unexplained_ledger",
)

#: Ledger reasons that annotate an applied event (lateness), never an anomaly.
ANNOTATIONS = frozenset({"LATE_CONTEXT_EVENT", "LATE_TRAFFIC_EVENT"})


async def controller_status(endpoint: Endpoint, *, timeout_s: float = 30.0, first: bool = False) -> dict[str, Any]:
    """The controller's status (``first``: before the drill changed anything, so a process that is
    not there at all is said at once instead of waited for).

    Raises:
        UsageError: drills are disabled in the running process (or it does not answer).
        CtxplaneError: ``first`` and nothing serves the query endpoint (no socket, connection
            refused), or no controller answered within ``timeout_s``.
    """
    answer = await endpoint.request({"op": "drill", "action": "status", "deadline_ms": 5000})
    response = answer.response
    if response is None and first:
        try:
            await endpoint.probe()
        except QueryEndpointUnavailable as exc:
            raise CtxplaneError(f"{exc}: no `ctxplane run` serves it (start one with drills.enabled: true)") from None
    if response is not None and response.get("code") in (ErrorCode.DRILLS_DISABLED, ErrorCode.FORBIDDEN):
        raise UsageError(f"the running process refuses drills: {response.get('detail')}")
    status = await endpoint.drill_until("status", timeout_s=timeout_s)
    if status is None:
        raise CtxplaneError(f"no drill controller answered within {timeout_s} s (is `ctxplane run` running?)")
    return status


async def figures_when_caught_up(settings: Settings, bus: EventBus, *, timeout_s: float) -> StoreFigures:
    """The store figures before a drill, read once the process has caught up with the bus.

    Raises:
        CtxplaneError: it did not catch up within ``timeout_s`` (the drill has changed nothing yet).
    """
    if await wait_caught_up(settings, bus, timeout_s=timeout_s) is None:
        raise CtxplaneError("the process did not catch up with the bus before the drill; nothing was changed")
    return await read_figures(settings)


def _restarts(status: dict[str, Any]) -> dict[str, int]:
    return {a["name"]: a["restarts"] for a in status["actors"]}


def restart_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, int]:
    b, a = _restarts(before), _restarts(after)
    return {name: n - b.get(name, 0) for name, n in sorted(a.items()) if n - b.get(name, 0)}


def escalation_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, int]:
    out = {name: n - before["escalations"].get(name, 0) for name, n in after["escalations"].items()}
    return {name: n for name, n in out.items() if n}


async def clean_pass_match(settings: Settings, after: StoreFigures, enabled: bool) -> tuple[bool | None, str]:
    if not enabled:
        return None, "skipped (--no-clean-pass)"
    state, ledger = await clean_pass_digests(settings, after.checkpoints)
    ok = state == after.state_digest and ledger == after.ledger_digest
    return ok, (f"live state {after.state_digest[:16]} vs clean pass {state[:16]}; "
                f"live ledger {after.ledger_digest[:16]} vs clean pass {ledger[:16]}")


def digest_check(match: bool | None, detail: str) -> list[Check]:
    return [] if match is None else [Check("digest equals a clean single pass", match, detail)]


def unexplained_ledger(delta: dict[str, int], allowed: frozenset[str] = frozenset()) -> dict[str, int]:
    return {r: n for r, n in delta.items() if r not in ANNOTATIONS and r not in allowed}

