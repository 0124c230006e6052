"""Health: GREEN / AMBER / RED with reason codes, from signals and a threshold policy (contracts.md §6).

Pure: the health actor gathers the signals; :func:`evaluate_health` decides. Replaying historical
timestamps must not page anyone: an old watermark while checkpoints are fresh and nothing else is
wrong is AMBER ``WATERMARK_REPLAY_ADVISORY``, not RED.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ctxplane.contracts.exceptions import ConfigError

__all__ = ("HealthPolicy", "HealthSignals", "Threshold", "evaluate_health", "load_health_policy")

SIGNALS = (
    "watermark_age_s", "checkpoint_age_s", "join_misses", "binding_conflicts", "apply_failures_hard",
    "missing_features", "snapshot_failures", "mailbox_saturation", "actor_restarts",
)
ENV_PREFIX = "CTXPLANE_HEALTH_"


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
    """Load the threshold policy and apply ``CTXPLANE_HEALTH_<SIGNAL>_<AMBER|RED>`` overrides.

    Raises:
        ConfigError: unreadable file, bad YAML, invalid thresholds, or a malformed override.
    """
    path = path or default_health_policy_path()
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"health policy {path}: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"health policy {path}: the top level must be a mapping")
    thresholds = raw.setdefault("thresholds", {})
    for name, value in (os.environ if env is None else env).items():
        if not name.startswith(ENV_PREFIX):
            continue
        signal, _, level = name[len(ENV_PREFIX):].lower().rpartition("_")
        if signal not in SIGNALS or level not in ("amber", "red"):
            raise ConfigError(f"{name}: expected {ENV_PREFIX}<SIGNAL>_<AMBER|RED> with SIGNAL one of {', '.join(s.upper() for s in SIGNALS)}")
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


@dataclass(frozen=True, slots=True)
class HealthSignals:
    """What the health actor measured; None means "no data yet"."""

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
        "policy": {"policy_id": policy.policy_id, "revision": policy.revision},
    }
