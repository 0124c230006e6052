"""Typed calls of the query clients: the ops as methods, a :class:`Pins` value, deadlines and retries.

Used through :class:`ctxplane.runtime.client.Client` (blocking) and
:class:`~ctxplane.runtime.client.AsyncClient`; this module holds what both share, without I/O: how
a call becomes a request, which answers are errors, and the retry policy (:class:`_Attempts`). The
clients only move the bytes (``_roundtrip``).

Semantics of every typed call:

- **Answers and errors.** An answer (``READY``, ``MISSING_*``, ``CONFLICT``, ``OK``, a health report)
  is returned as the decoded JSON object. An error answer (``status`` ``ERROR``, ``INVALID_REQUEST``
  or ``UNAVAILABLE``) raises :class:`QueryError` with its ``code``, ``retryable`` and ``detail``.
- **Deadline.** Each call has one deadline (``deadline_ms``; default the client's, at least
  ``wait_ms``) covering every attempt; each request carries the time left as its ``deadline_ms``, so
  the server gives up when the caller would. No answer by then (plus a small transport grace) raises
  :class:`QueryTimeout` and drops the connection (a late answer must not be read as the next one).
- **Retries only where they can help.** An error answer marked ``retryable: true`` (``OVERLOADED``,
  ``STORE_UNAVAILABLE``, ``UNAVAILABLE``, ...) is retried after a short jittered backoff while the
  deadline leaves time, at most ``max_attempts`` attempts in all; so is a connection that broke
  before its answer came (every op is a read, so resending is safe). Nothing else is retried.
- **Connection reuse.** One connection is opened on the first call and reused; one the server
  closed meanwhile (``query.idle_timeout_s``) is reopened transparently.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any, TypeAlias

from ctxplane.contracts.answers import ERROR_STATUSES
from ctxplane.contracts.envelope import PIN_FIELDS, pins_problems
from ctxplane.contracts.timestamps import canonical_instant
from ctxplane.runtime.exceptions import CtxplaneError

__all__ = (
    "ERROR_STATUSES",
    "FeatureGroup",
    "FeatureKey",
    "Pins",
    "PinsLike",
    "QueryEndpointUnavailable",
    "QueryError",
    "QueryTimeout",
    "is_error",
)

#: Statuses of error answers; every other status (MISSING_*, CONFLICT included) is an answer.

# Backoff between attempts: doubling from the base, capped, with jitter (half fixed, half random) so
# clients shed by OVERLOADED at the same moment do not come back at the same moment.
_BACKOFF_BASE_S = 0.01
_BACKOFF_CAP_S = 0.2
# Time the transport may add to the server's deadline (the answer's trip back) before the client
# stops waiting. The server answers DEADLINE_EXCEEDED at the deadline, so this is only reached when
# the endpoint hangs or the machine is overloaded.
_TRANSPORT_GRACE_S = 0.5
# An attempt needs at least this much deadline left to be worth sending.
_MIN_ATTEMPT_MS = 5


class QueryEndpointUnavailable(CtxplaneError):
    """The query endpoint cannot be reached (no process running, or wrong ``query.listen``), or it
    closed the connection before answering."""


class QueryTimeout(QueryEndpointUnavailable):
    """No answer arrived within the call's deadline (plus a transport grace); the connection was
    dropped, since a late answer would otherwise be read as the next one."""


class QueryError(CtxplaneError):
    """The endpoint answered with an error (after any retries the deadline allowed).

    Attributes:
        code: the error's code (``INVALID_REQUEST``, ``MISSING_PINS``, ``OVERLOADED``, ...).
        retryable: whether the server said a later attempt can succeed.
        detail: the server's explanation.
        answer: the whole error answer.
        attempts: how many requests were sent for the call.
    """

    def __init__(self, answer: Mapping[str, Any], attempts: int = 1) -> None:
        self.answer = dict(answer)
        self.code = str(answer.get("code") or answer.get("status"))
        self.retryable = bool(answer.get("retryable"))
        self.detail = str(answer.get("detail", ""))
        self.attempts = attempts
        tries = f" (after {attempts} attempts)" if attempts > 1 else ""
        super().__init__(f"{self.code}: {self.detail}{tries}")


def is_error(answer: Mapping[str, Any]) -> bool:
    """Whether ``answer`` is an error answer (not a MISSING or CONFLICT answer, which are answers)."""
    return answer.get("status") in ERROR_STATUSES


@dataclass(frozen=True, slots=True)
class Pins:
    """The ContextPins a query presents: the six required, ``run_id`` when the run's events carry one.

    Checked when built: a value with a missing or malformed pin raises ``ValueError`` naming every
    problem. ``ctxplane runs --json`` prints each run's pins, ready for :meth:`from_mapping`.
    """

    platform_run_id: str
    scenario_run_id: str
    manifest_fingerprint: str
    parameter_hash: str
    scenario_id: str
    seed: int
    run_id: str | None = None

    def __post_init__(self) -> None:
        problems = pins_problems(self.as_dict())
        if problems:
            raise ValueError(problems.detail())

    @classmethod
    def from_mapping(cls, pins: Mapping[str, Any]) -> Pins:
        """Build from a JSON object (a request's or an answer's ``pins``, a ``ctxplane runs`` entry's).

        Raises:
            ValueError: naming every missing, malformed or unknown field.
        """
        problems = pins_problems(dict(pins))
        if problems:
            raise ValueError(problems.detail())
        values: dict[str, Any] = {f.name: pins.get(f.name) for f in fields(cls)}  # checked just above
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        """The pins as a request carries them (``run_id`` only when set)."""
        pins = {name: getattr(self, name) for name in PIN_FIELDS}
        if self.run_id is not None:
            pins["run_id"] = self.run_id
        return pins


PinsLike: TypeAlias = Pins | Mapping[str, Any]
#: A feature key: ``(key_type, key_id)`` or ``{"key_type": ..., "key_id": ...}``.
FeatureKey: TypeAlias = tuple[str, str] | Mapping[str, Any]
#: A feature group: ``(name, version)`` or ``{"name": ..., "version": ...}``.
FeatureGroup: TypeAlias = tuple[str, str] | Mapping[str, Any]


def _instant(value: str | datetime) -> str:
    """An ``as_of`` as the wire wants it: any RFC 3339 string, or a timezone-aware datetime."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("as_of must be timezone-aware (a naive datetime names no instant)")
        t = value.astimezone(UTC)
        return f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}.{t.microsecond:06d}Z"
    return canonical_instant(value)


def _pair(item: tuple[Any, Any] | Mapping[str, Any], first: str, second: str) -> dict[str, Any]:
    if isinstance(item, Mapping):
        return {first: item[first], second: item[second]}
    a, b = item
    return {first: a, second: b}


class _Attempts:
    """The retry policy of one call: its deadline, the attempts left, the backoff between them."""

    def __init__(self, deadline_ms: int, max_attempts: int) -> None:
        self._until = time.monotonic() + deadline_ms / 1000
        self._left = max_attempts
        self.sent = 0

    def budget_ms(self) -> int | None:
        """The deadline of the next attempt (the time left), or None when none may be sent."""
        left_ms = int((self._until - time.monotonic()) * 1000)
        if self._left <= 0 or (self.sent and left_ms < _MIN_ATTEMPT_MS):
            return None
        self._left -= 1
        self.sent += 1
        return max(1, left_ms)

    def backoff_s(self, *, reused_connection_lost: bool = False) -> float | None:
        """How long to wait before the next attempt, or None when there is no time or attempt left.
        A reused connection found closed is retried at once (the server closed it while idle)."""
        if self._left <= 0:
            return None
        delay = 0.0 if reused_connection_lost else min(_BACKOFF_CAP_S, _BACKOFF_BASE_S * 2 ** (self.sent - 1))
        delay = delay / 2 + random.random() * delay / 2
        if time.monotonic() + delay + _MIN_ATTEMPT_MS / 1000 >= self._until:
            return None
        return delay


class _Calls:
    """Request building shared by both clients (set ``_pins`` and ``_deadline_ms`` in ``__init__``)."""

    _pins: Pins | None
    _deadline_ms: int
    _max_attempts: int

    def _pins_of(self, pins: PinsLike | None) -> dict[str, Any]:
        if pins is None:
            if self._pins is None:
                raise ValueError("no pins: pass pins, or give the client default pins (Client(..., pins=Pins(...)))")
            return self._pins.as_dict()
        return pins.as_dict() if isinstance(pins, Pins) else dict(pins)

    def _deadline(self, deadline_ms: int | None, wait_ms: int) -> int:
        return deadline_ms if deadline_ms is not None else max(self._deadline_ms, wait_ms)

    def _join(self, op: str, field: str, value: Any, pins: PinsLike | None, wait_ms: int,
              request_id: str | None) -> dict[str, Any]:
        request: dict[str, Any] = {"op": op, "pins": self._pins_of(pins), field: value}
        if wait_ms:
            request["wait_ms"] = wait_ms
        if request_id is not None:
            request["request_id"] = request_id
        return request

    def _resolve_request(self, flow_id: str, pins: PinsLike | None, wait_ms: int, request_id: str | None) -> dict[str, Any]:
        return self._join("resolve_flow_binding", "flow_id", flow_id, pins, wait_ms, request_id)

    def _frame_request(self, join_frame_key: Mapping[str, Any] | tuple[str, int], pins: PinsLike | None, wait_ms: int,
                       request_id: str | None) -> dict[str, Any]:
        key = dict(join_frame_key) if isinstance(join_frame_key, Mapping) else _pair(join_frame_key, "merchant_id", "arrival_seq")
        return self._join("fetch_join_frame", "join_frame_key", key, pins, wait_ms, request_id)

    def _features_request(self, keys: Iterable[FeatureKey], groups: Iterable[FeatureGroup], as_of: str | datetime,
                          pins: PinsLike | None, wait_ms: int, graph_resolution_mode: str | None,
                          request_id: str | None) -> dict[str, Any]:
        request: dict[str, Any] = {
            "op": "get_features", "pins": self._pins_of(pins), "as_of_time_utc": _instant(as_of),
            "feature_keys": [_pair(k, "key_type", "key_id") for k in keys],
            "feature_groups": [_pair(g, "name", "version") for g in groups],
        }
        if wait_ms:
            request["wait_ms"] = wait_ms
        if graph_resolution_mode is not None:
            request["graph_resolution_mode"] = graph_resolution_mode
        if request_id is not None:
            request["request_id"] = request_id
        return request


def _attempt_request(request: Mapping[str, Any], budget_ms: int) -> dict[str, Any]:
    """The request of one attempt: the time left is its deadline, and any wait fits in it."""
    attempt = {**request, "deadline_ms": budget_ms}
    if "wait_ms" in attempt:
        attempt["wait_ms"] = min(attempt["wait_ms"], budget_ms)
    return attempt


def _timeout_s(budget_ms: int) -> float:
    return budget_ms / 1000 + _TRANSPORT_GRACE_S
