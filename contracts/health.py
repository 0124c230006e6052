"""Health: GREEN / AMBER / RED with reason codes, from signals and a threshold policy (docs/health.md).

Pure: the health actor gathers the signals; :func:`evaluate_health` decides. Replaying historical
timestamps must not page anyone: an old watermark while checkpoints are fresh and nothing else is
wrong is AMBER ``WATERMARK_REPLAY_ADVISORY``, not RED.

Health recovers. The counted signals (:data:`COUNTED_SIGNALS`: join misses, binding conflicts, hard
apply failures, missing features, snapshot failures, actor restarts) count only what happened in the
policy's window (``window_s``, the last N seconds), and only after the operator's last
acknowledgement (``ctxplane ack``) when that is later: :func:`counted_since` is the instant they
count from. So once the cause is gone, health is GREEN again at the latest ``window_s`` later, or at
once after an acknowledgement. The live signals (store availability, checkpoint and watermark age,
mailbox saturation) are measured as they are now; an acknowledgement never hides them.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ctxplane.contracts.exceptions import ConfigError
from ctxplane.contracts.yamlfile import YAMLError, load_yaml, yaml_problem

__all__ = (
    "COUNTED_SIGNALS",
    "CounterWindow",
    "HealthPolicy",
    "HealthSignals",
    "Threshold",
    "counted_since",
    "evaluate_health",
    "load_health_policy",
    "parse_ack_request",
)

SIGNALS = (
    "watermark_age_s", "checkpoint_age_s", "join_misses", "binding_conflicts", "apply_failures_hard",
    "missing_features", "snapshot_failures", "mailbox_saturation", "actor_restarts",
)
# Counted over the policy window (and from the last acknowledgement); the others are measured now.
COUNTED_SIGNALS = (
    "join_misses", "binding_conflicts", "apply_failures_hard", "missing_features", "snapshot_failures", "actor_restarts",
)
ENV_PREFIX = "CTXPLANE_HEALTH_"
WINDOW_ENV = f"{ENV_PREFIX}WINDOW_S"
MAX_ACK_TEXT = 500


class Threshold(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    amber: float = Field(ge=0)
    red: float = Field(ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> Threshold:
        if self.red < self.amber:
            raise ValueError(f"red ({self.red}) must be >= amber ({self.amber})")
        return self


class HealthPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    policy_id: str
    revision: str
    thresholds: dict[str, Threshold]
    # The counted signals count what happened in the last window_s seconds.
    window_s: float = Field(default=900.0, gt=0)
    max_unresolved_anomalies: int = Field(default=200, ge=0)

    @model_validator(mode="after")
    def _known(self) -> HealthPolicy:
        unknown = sorted(set(self.thresholds) - set(SIGNALS))
        if unknown:
            raise ValueError(f"unknown signal {unknown[0]} (known: {', '.join(SIGNALS)})")
        missing = sorted(set(SIGNALS) - set(self.thresholds))
        if missing:
            raise ValueError(f"missing threshold for {missing[0]}")
        return self


def default_health_policy_path() -> Path:
    from importlib import resources

    return Path(str(resources.files("ctxplane.config").joinpath("policies", "observability.v0.yaml")))


def load_health_policy(path: Path | None = None, env: Mapping[str, str] | None = None) -> HealthPolicy:
    """Load the threshold policy and apply ``CTXPLANE_HEALTH_<SIGNAL>_<AMBER|RED>`` overrides
    (and ``CTXPLANE_HEALTH_WINDOW_S`` for the window).

    Raises:
        ConfigError: unreadable file, bad YAML, invalid thresholds, or a malformed override.
    """
    path = path or default_health_policy_path()
    try:
        raw = load_yaml(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"health policy {path}: {exc}") from None
    except YAMLError as exc:
        raise ConfigError(f"health policy {path}: {yaml_problem(exc)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"health policy {path}: the top level must be a mapping")
    thresholds = raw.setdefault("thresholds", {})
    for name, value in (os.environ if env is None else env).items():
        if not name.startswith(ENV_PREFIX):
            continue
        if name == WINDOW_ENV:
            try:
                raw["window_s"] = float(value)
            except ValueError:
                raise ConfigError(f"{name}: {value!r} is not a number") from None
            continue
        signal, _, level = name[len(ENV_PREFIX):].lower().rpartition("_")
        if signal not in SIGNALS or level not in ("amber", "red"):
            raise ConfigError(f"{name}: expected {ENV_PREFIX}<SIGNAL>_<AMBER|RED> (SIGNAL one of"
                              f" {', '.join(s.upper() for s in SIGNALS)}) or {WINDOW_ENV}")
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"{name}: {value!r} is not a number") from None
        thresholds.setdefault(signal, {})[level] = number
    try:
        return HealthPolicy.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(str(p) for p in error["loc"])
        raise ConfigError(f"health policy {path}: {key}: {error['msg'].removeprefix('Value error, ')}") from None


def counted_since(now: float, window_s: float, acked_at: float | None) -> float:
    """The wall-clock instant the counted signals count from: the start of the window, or the last
    acknowledgement when that is later."""
    start = now - window_s
    return start if acked_at is None else max(start, acked_at)


class CounterWindow:
    """Cumulative counters of one process, sampled over time, so that a signal can be "how many since
    instant T" (T within the window being kept).

    :meth:`record` keeps a step function of the counters: a new sample only when a total changed, so
    a quiet process keeps one sample however long the window. A total that goes down (its counter
    started again from zero, e.g. a restarted supervisor's children) is a counter reset: what it had
    counted is carried on, as Prometheus' ``increase()`` does, so nothing counted is lost.
    """

    def __init__(self) -> None:
        self._samples: deque[tuple[float, dict[str, int]]] = deque()
        self._last_raw: dict[str, int] = {}
        self._carried: dict[str, int] = {}
        self._current: dict[str, int] = {}

    def record(self, now: float, totals: Mapping[str, int], *, keep_s: float) -> None:
        """Note the raw ``totals`` at wall time ``now``; samples older than ``keep_s`` are dropped
        (except the newest of them, which is the value at the start of the kept span)."""
        for name, raw in totals.items():
            last = self._last_raw.get(name, 0)
            if raw < last:
                self._carried[name] = self._carried.get(name, 0) + last
            self._last_raw[name] = raw
        current = {name: raw + self._carried.get(name, 0) for name, raw in self._last_raw.items()}
        if current != self._current:
            self._current = current
            self._samples.append((now, current))
        horizon = now - keep_s
        while len(self._samples) > 1 and self._samples[1][0] <= horizon:
            self._samples.popleft()

    def count_since(self, since: float) -> dict[str, int]:
        """What each counter counted after ``since`` (up to the last :meth:`record`)."""
        base: dict[str, int] = {}
        for at, values in self._samples:
            if at > since:
                break
            base = values
        return {name: value - base.get(name, 0) for name, value in self._current.items()}


def parse_ack_request(request: Mapping[str, Any]) -> tuple[str, str] | str:
    """``(by, reason)`` of a ``health_ack`` request, or the error to answer."""
    values = []
    for name in ("by", "reason"):
        value = request.get(name)
        if not isinstance(value, str) or not value.strip():
            return f"{name}: a non-empty string is required (who acknowledges, and why)"
        if len(value) > MAX_ACK_TEXT:
            return f"{name}: at most {MAX_ACK_TEXT} characters"
        values.append(value.strip())
    return values[0], values[1]


@dataclass(frozen=True, slots=True)
class HealthSignals:
    """What the health actor measured; None means "no data yet". The counted signals are counts in
    the window (see :func:`counted_since`)."""

    watermark_age_s: float | None
    checkpoint_age_s: float | None  # only counted while records wait on the bus (lag > 0)
    join_misses: int = 0
    binding_conflicts: int = 0
    apply_failures_hard: int = 0
    missing_features: int = 0
    snapshot_failures: int = 0
    mailbox_saturation: float = 0.0
    actor_restarts: int = 0
    store_available: bool = True
    partitions: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


_COUNTER_REASONS = {
    "join_misses": "JOIN_MISSES",
    "binding_conflicts": "BINDING_CONFLICTS",
    "apply_failures_hard": "APPLY_FAILURES",
    "missing_features": "MISSING_FEATURES",
    "snapshot_failures": "SNAPSHOT_FAILURES",
    "mailbox_saturation": "MAILBOX_SATURATION",
    "actor_restarts": "ACTOR_RESTARTS",
}
_RANK = {"GREEN": 0, "AMBER": 1, "RED": 2}


def _level(value: float, threshold: Threshold) -> str:
    if value >= threshold.red:
        return "RED"
    if value >= threshold.amber:
        return "AMBER"
    return "GREEN"


def evaluate_health(signals: HealthSignals, policy: HealthPolicy) -> dict[str, Any]:
    """Return ``{"state", "reasons", "signals", "policy"}``; reasons are sorted by severity then name."""
    t = policy.thresholds
    found: dict[str, str] = {}  # reason -> level
    if not signals.store_available:
        found["STORE_UNAVAILABLE"] = "RED"
    if signals.partitions and signals.checkpoint_age_s is not None:
        level = _level(signals.checkpoint_age_s, t["checkpoint_age_s"])
        if level != "GREEN":
            found["CHECKPOINT_OLD" if level == "AMBER" else "CHECKPOINT_TOO_OLD"] = level
    for name, reason in _COUNTER_REASONS.items():
        level = _level(getattr(signals, name), t[name])
        if level != "GREEN":
            found[f"{reason}_{level}"] = level
    if signals.partitions and signals.watermark_age_s is None:
        found["WATERMARK_MISSING"] = "AMBER"
    elif signals.watermark_age_s is not None:
        level = _level(signals.watermark_age_s, t["watermark_age_s"])
        if level == "RED":
            others_fine = all(lvl != "RED" for lvl in found.values()) and "CHECKPOINT_OLD" not in found
            if others_fine:
                # Historical timestamps with fresh checkpoints: a replay, not an outage.
                found["WATERMARK_REPLAY_ADVISORY"] = "AMBER"
            else:
                found["WATERMARK_TOO_OLD"] = "RED"
        elif level == "AMBER":
            found["WATERMARK_OLD"] = "AMBER"
    state = max(found.values(), key=_RANK.__getitem__, default="GREEN")
    reasons = sorted(found, key=lambda r: (-_RANK[found[r]], r))
    return {
        "state": state,
        "reasons": reasons,
        "signals": {
            "watermark_age_s": signals.watermark_age_s, "checkpoint_age_s": signals.checkpoint_age_s,
            "join_misses": signals.join_misses, "binding_conflicts": signals.binding_conflicts,
            "apply_failures_hard": signals.apply_failures_hard, "missing_features": signals.missing_features,
            "snapshot_failures": signals.snapshot_failures, "mailbox_saturation": round(signals.mailbox_saturation, 4),
            "actor_restarts": signals.actor_restarts, "store_available": signals.store_available,
        },
        "policy": {"policy_id": policy.policy_id, "revision": policy.revision, "window_s": policy.window_s},
    }
