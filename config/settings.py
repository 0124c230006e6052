"""Deployment configuration: one YAML file per profile, validated by pydantic.

Rules (docs/configuration.md):
- unknown keys are errors; every problem is reported at once, one line each naming the dotted key,
  where it came from (the file or the environment variable) and, for an unknown key, the closest
  valid ones (:func:`inspect_settings`; ``ctxplane config check``);
- ``CTXPLANE__SECTION__KEY`` environment variables override file values (values are parsed as YAML
  scalars/flow collections, so ``true``, ``12``, ``null`` and ``[a, b]`` work). The overrides are read
  here (:func:`_apply_env_overrides`), not by pydantic-settings' env source: that source reads
  ``null`` as the string ``"null"``, refuses ``[a, b]`` (JSON only) with one exception for the whole
  section, silently ignores a variable naming an unknown section (``CTXPLANE__STOER__DSN``), and
  cannot say which variable set a bad key, all of which ``config check`` reports;
- relative paths resolve against the directory of the config file (or the working directory when
  there is no file);
- secrets (DSN passwords, auth tokens) never appear in messages: see :func:`redact_dsn`. ``store.dsn``
  and ``query.auth_token`` are :class:`~pydantic.SecretStr`: their ``repr`` is masked, a JSON dump
  shows the DSN redacted and the token as ``***`` (unless asked for with :data:`REVEAL_SECRETS`),
  and :func:`secret_value` unwraps them where they are used (connecting, checking a request's auth).
"""

from __future__ import annotations

import copy
import difflib
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    SerializationInfo,
    ValidationError,
    field_serializer,
    field_validator,
)

from ctxplane.contracts.exceptions import ConfigError
from ctxplane.contracts.yamlfile import YAMLError, load_yaml, yaml_problem

__all__ = (
    "MASK",
    "REVEAL_SECRETS",
    "BusSettings",
    "ConfigReport",
    "DrillSettings",
    "FeaturesSettings",
    "IngestSettings",
    "JoinPlaneSettings",
    "LeaseSettings",
    "LoggingSettings",
    "MetricsSettings",
    "QuerySettings",
    "RunSettings",
    "Settings",
    "StoreSettings",
    "inspect_settings",
    "load_settings",
    "is_loopback",
    "redact_dsn",
    "secret_value",
)

ENV_PREFIX = "CTXPLANE__"
_PLATFORM_RUN_ID = re.compile(r"^platform_[0-9]{8}T[0-9]{6}Z$")

CONTEXT_TOPICS = (
    "fp.bus.context.arrival_events.v1",
    "fp.bus.context.arrival_entities.v1",
    "fp.bus.context.flow_anchor.fraud.v1",
    "fp.bus.context.flow_anchor.baseline.v1",
)
TRAFFIC_TOPICS = ("fp.bus.traffic.fraud.v1", "fp.bus.traffic.baseline.v1")

MASK = "***"  # what a dump shows for a secret it does not reveal
# Serialization context of a JSON dump that must carry the secrets themselves: only the settings a
# process hands its own query workers over their channel (actors/serve/query.py).
REVEAL_SECRETS: Mapping[str, bool] = {"reveal_secrets": True}


def secret_value(secret: SecretStr | None) -> str | None:
    """The secret itself, for the one place that uses it (a connection, an auth check)."""
    return None if secret is None else secret.get_secret_value()


def _reveals(info: SerializationInfo) -> bool:
    context = info.context
    return isinstance(context, Mapping) and context.get("reveal_secrets") is True


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RunSettings(_Section):
    platform_run_id: str | None = None
    profile: str = "local"

    @field_validator("platform_run_id")
    @classmethod
    def _run_id_format(cls, value: str | None) -> str | None:
        if value is not None and not _PLATFORM_RUN_ID.match(value):
            raise ValueError("must look like platform_YYYYMMDDTHHMMSSZ")
        return value


class StoreSettings(_Section):
    dsn: SecretStr = SecretStr("sqlite:///runs/ctxplane.sqlite")
    # FULL: a commit survives power loss. NORMAL is faster but may lose the last commits on power loss.
    synchronous: Literal["FULL", "NORMAL"] = "FULL"
    # Local profiles migrate on start; production profiles run `ctxplane migrate` explicitly.
    auto_migrate: bool = True
    # Seconds a write may wait on the store before the writer backs off and retries.
    busy_timeout_s: float = Field(default=5.0, gt=0)
    # SQLite memory per connection (the writer, each reader). The page cache is process heap; the
    # memory map counts in RSS as its pages are touched, up to the database size. Both were 128 MiB /
    # 1 GiB once, which took a 10^6-event burst to 1.3 GB RSS (docs/performance.md §Targets, P7: <= 300 MB).
    sqlite_cache_mb: int = Field(default=32, ge=1)
    sqlite_mmap_mb: int = Field(default=0, ge=0)

    @field_validator("dsn")
    @classmethod
    def _dsn_scheme(cls, secret: SecretStr) -> SecretStr:
        value = secret.get_secret_value()
        if not (value.startswith("sqlite:///") or value.startswith(("postgresql://", "postgres://"))):
            raise ValueError("must start with sqlite:/// or postgresql://")
        if value.startswith("postgres") and not _well_formed_postgres_dsn(value):
            # Never echo the value: a malformed DSN is where an unencoded password ends up.
            raise ValueError(
                "is not a well-formed postgresql://user:password@host:port/db URL"
                " (percent-encode @ # / ? in the password)"
            )
        return secret

    @field_serializer("dsn", when_used="json")
    def _dsn_json(self, secret: SecretStr, info: SerializationInfo) -> str:
        return secret.get_secret_value() if _reveals(info) else redact_dsn(secret.get_secret_value())

    @property
    def redacted_dsn(self) -> str:
        """The DSN with its password masked, for logs and messages."""
        return redact_dsn(self.dsn.get_secret_value())

    @property
    def backend(self) -> Literal["sqlite", "postgresql"]:
        return "sqlite" if self.dsn.get_secret_value().startswith("sqlite:") else "postgresql"

    @property
    def sqlite_path(self) -> Path:
        """The database file of a ``sqlite:///`` DSN (``sqlite:////abs`` is absolute)."""
        return Path(self.dsn.get_secret_value()[len("sqlite:///") :])


def _well_formed_postgres_dsn(dsn: str) -> bool:
    try:
        parts = urlsplit(dsn)
        parts.port  # noqa: B018 - raises ValueError on a non-numeric port
    except ValueError:
        return False
    # No host is fine (libpq defaults: PGHOST, the local socket); an unencoded # or a second @ is not.
    return not parts.fragment and parts.netloc.count("@") <= 1


class BusSettings(_Section):
    kind: Literal["file", "kinesis"] = "file"
    root: Path = Path("runs/eb")
    start_position: Literal["trim_horizon", "latest"] = "trim_horizon"
    endpoint_url: str | None = None
    region: str | None = None
    streams: dict[str, str] = Field(default_factory=dict)


class JoinPlaneSettings(_Section):
    enabled: bool = True
    topics: tuple[str, ...] = CONTEXT_TOPICS
    # Roles a frame needs before it is context_complete.
    required_roles: tuple[Literal["arrival_event", "arrival_entities", "flow_anchor"], ...] = (
        "arrival_event",
        "flow_anchor",
    )
    allowed_lateness_s: float = Field(default=120.0, ge=0)


class FeaturesSettings(_Section):
    enabled: bool = True
    policy: Path | None = None  # None: the default policy shipped with the package
    topics: tuple[str, ...] = TRAFFIC_TOPICS
    allowed_lateness_s: float = Field(default=120.0, ge=0)
    # Extra retention kept behind the longest ttl before pruning, so late events still land in kept tiles.
    retention_grace_s: float = Field(default=3600.0, ge=0)


class QuerySettings(_Section):
    listen: str = "unix:runs/ctxplane.sock"
    # Worker processes serving the socket, each its own interpreter (actors/serve/worker.py).
    workers: int = Field(default=1, ge=1, le=64)
    auth_token: SecretStr | None = None
    max_connections: int = Field(default=256, ge=1)
    max_request_bytes: int = Field(default=65536, ge=1024)
    # A connection silent this long, with no answer pending, is closed (clients reconnect).
    idle_timeout_s: float = Field(default=60.0, gt=0)
    # A request line must be complete this long after its first byte (a trickle cannot hold a slot).
    request_read_timeout_s: float = Field(default=10.0, gt=0)
    # Requests queued beyond this are answered OVERLOADED at once instead of waiting.
    max_pending: int = Field(default=1024, ge=1)
    default_deadline_ms: int = Field(default=1000, ge=1)
    # Larger deadline_ms / wait_ms are INVALID_REQUEST: no request holds a connection slot for longer.
    max_deadline_ms: int = Field(default=5000, ge=1)

    @field_validator("listen")
    @classmethod
    def _listen_format(cls, value: str) -> str:
        if value.startswith("unix:") and len(value) > len("unix:"):
            return value
        if value.startswith("tcp://") and re.match(r"^tcp://[^:/]+:\d{1,5}$", value):
            return value
        raise ValueError("must be unix:PATH or tcp://HOST:PORT")

    @field_serializer("auth_token", when_used="json")
    def _token_json(self, secret: SecretStr | None, info: SerializationInfo) -> str | None:
        if secret is None:
            return None
        return secret.get_secret_value() if _reveals(info) else MASK


class MetricsSettings(_Section):
    listen: str | None = "127.0.0.1:9464"


class IngestSettings(_Section):
    # Records (and raw bytes) per ApplyBatch. Transactions are per group commit, not per batch, so
    # small batches cost little; but decoded records in flight are most of the process's memory:
    # at most partitions x inflight_batches batches are unacknowledged (waiting in the store-writer's
    # mailbox, in its group commit, or in a partition actor's blocked tell). 500 keeps a 10^6-event
    # burst over 24 partitions at ~200 MB RSS; 2000 took it to ~450 MB (docs/architecture.md §Memory).
    batch_max_records: int = Field(default=500, ge=1)
    batch_max_bytes: int = Field(default=2 * 1024 * 1024, ge=1024)
    # ApplyBatches a partition actor may have unacknowledged (the in-flight window K).
    inflight_batches: int = Field(default=2, ge=1)
    # How soon an idle partition actor looks for new records again; each empty look doubles the wait,
    # up to idle_poll_max_ms, and records found reset it. On the file bus an inotify change
    # notification wakes it at once, so the ceiling only bounds what a missed notification costs.
    poll_interval_ms: int = Field(default=50, ge=1)
    idle_poll_max_ms: int = Field(default=1000, ge=1)
    # Upper bound on records folded into one group commit.
    group_commit_max_records: int = Field(default=20000, ge=1)
    store_writer_mailbox: int = Field(default=16, ge=1)


class LoggingSettings(_Section):
    format: Literal["console", "json"] = "console"
    level: Literal["debug", "info", "warning", "error"] = "info"


class HealthSettings(_Section):
    policy: Path | None = None  # None: the default thresholds shipped with the package
    artifact_root: Path = Path("runs")
    artifact_interval_s: float = Field(default=10.0, gt=0)


class LeaseSettings(_Section):
    """Partition leases for scale-out (actors/ingest/leases.py; PostgreSQL only). Active when ``enabled``
    or when the store is PostgreSQL and ``bus.kind`` is kinesis."""

    enabled: bool = False
    # A lease not renewed for this long is free for another process to take.
    duration_s: float = Field(default=10.0, gt=0)
    # Renew (and rebalance) this often; well under duration_s so one slow round never loses leases.
    renew_every_s: float = Field(default=3.0, gt=0)
    owner: str | None = None  # None: "<hostname>:<pid>"


class DrillSettings(_Section):
    """Failure drills (``ctxplane drill``; actors/drills/controller.py). Off by default: with ``enabled: false``
    the process has no drill controller and the ``drill`` op is refused, so nothing can inject a
    fault into a production process by accident."""

    enabled: bool = False


class Settings(_Section):
    run: RunSettings = RunSettings()
    store: StoreSettings = StoreSettings()
    bus: BusSettings = BusSettings()
    join_plane: JoinPlaneSettings = JoinPlaneSettings()
    features: FeaturesSettings = FeaturesSettings()
    query: QuerySettings = QuerySettings()
    metrics: MetricsSettings = MetricsSettings()
    ingest: IngestSettings = IngestSettings()
    logging: LoggingSettings = LoggingSettings()
    health: HealthSettings = HealthSettings()
    drills: DrillSettings = DrillSettings()
    leases: LeaseSettings = LeaseSettings()
    source: Path | None = Field(default=None, exclude=True)

    def topics(self) -> dict[str, str]:
        """Every consumed topic mapped to its plane (``join`` or ``features``)."""
        planes: dict[str, str] = {}
        if self.join_plane.enabled:
            planes.update({topic: "join" for topic in self.join_plane.topics})
        if self.features.enabled:
            planes.update({topic: "features" for topic in self.features.topics})
        return planes


_PASSWORD_PARAM = re.compile(r"(?i)((?:^|[?&;\s])password=)[^&;\s]*")


def redact_dsn(dsn: str) -> str:
    """Return ``dsn`` with every password replaced by ``***`` (safe for logs and messages).

    Holds for any string, parseable or not: everything between ``://`` and the *last* ``@`` after
    the user name is the password (an unencoded ``@``, ``#``, ``/`` or ``?`` in it cannot shift the
    cut), and a ``password=`` query parameter is masked too. When in doubt, more is masked.
    """
    scheme, sep, rest = dsn.partition("://")
    if sep and "@" in rest:
        userinfo, _, host = rest.rpartition("@")
        user, colon, _password = userinfo.partition(":")
        rest = f"{user}:***@{host}" if colon else f"{userinfo}@{host}"
    return _PASSWORD_PARAM.sub(r"\1***", f"{scheme}{sep}{rest}")


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP addresses (a bind only this machine can reach)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class ConfigReport:
    """What loading a configuration found: the settings (``None`` when invalid), every problem (one
    line each, naming the key and where it came from), and the keys environment variables set."""

    settings: Settings | None
    problems: tuple[str, ...]
    overrides: Mapping[str, str]  # dotted key -> the CTXPLANE__... variable that set it


def load_settings(path: str | os.PathLike[str] | None, env: Mapping[str, str] | None = None) -> Settings:
    """Load, override from the environment, validate and resolve a configuration.

    Args:
        path: the YAML profile; ``None`` uses defaults only (plus environment overrides).
        env: the environment to read overrides from (defaults to ``os.environ``).

    Returns:
        A frozen :class:`Settings` whose relative paths are resolved against the file's directory.

    Raises:
        ConfigError: missing or unreadable file, bad YAML, unknown keys or invalid values. The
            message has one line per problem (every problem at once), each naming the key, where it
            came from (the file, or the environment variable that set it) and, for an unknown key,
            the closest valid keys.
    """
    report = inspect_settings(path, env)
    if report.problems:
        raise ConfigError("\n".join(report.problems))
    assert report.settings is not None
    return report.settings


def inspect_settings(path: str | os.PathLike[str] | None, env: Mapping[str, str] | None = None) -> ConfigReport:
    """:func:`load_settings` without raising for what is wrong: every problem is reported.

    A file that cannot be read or parsed is one problem (nothing else can be checked then);
    otherwise every malformed override, unknown key and invalid value is listed.
    """
    raw: dict[str, Any] = {}
    base = Path.cwd()
    where = f"{path}: " if path is not None else ""
    if path is not None:
        file = Path(path)
        try:
            text = file.read_text(encoding="utf-8")
        except FileNotFoundError:
            return ConfigReport(None, (f"config file not found: {file}",), {})
        except (OSError, UnicodeDecodeError) as exc:
            return ConfigReport(None, (f"cannot read config file {file}: {exc}",), {})
        try:
            loaded = load_yaml(text)
        except YAMLError as exc:
            return ConfigReport(None, (f"{file}: {yaml_problem(exc)}",), {})
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            return ConfigReport(None, (f"{file}: the top level must be a mapping of sections",), {})
        raw = loaded
        base = file.resolve().parent
    in_file = copy.deepcopy(raw)
    overrides, problems = _apply_env_overrides(raw, os.environ if env is None else env)
    dotted = {".".join(keys): name for keys, name in overrides.items()}
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        problems += _problems(exc, where, overrides, in_file)
        return ConfigReport(None, tuple(problems), dotted)
    if problems:
        return ConfigReport(None, tuple(problems), dotted)
    exposure = _exposure_problem(settings, where)
    if exposure is not None:
        return ConfigReport(None, (exposure,), dotted)
    return ConfigReport(_resolve_paths(settings, base, Path(path) if path is not None else None), (), dotted)


def _exposure_problem(settings: Settings, where: str) -> str | None:
    """Refuse, before anything starts, a query socket others can reach without a token."""
    listen = settings.query.listen
    if listen.startswith("tcp://") and not secret_value(settings.query.auth_token):
        host = listen[len("tcp://") :].rpartition(":")[0]
        if not is_loopback(host):
            return f"{where}query.auth_token: required when query.listen binds a non-loopback address ({host})"
    return None


def _apply_env_overrides(raw: dict[str, Any], env: Mapping[str, str]) -> tuple[dict[tuple[str, ...], str], list[str]]:
    """Apply ``CTXPLANE__SECTION__KEY`` variables to ``raw``; returns the key paths they set (with the
    variable's name) and one problem per variable that cannot be applied."""
    overrides: dict[tuple[str, ...], str] = {}
    problems: list[str] = []
    for name, value in sorted(env.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        keys = [part.lower() for part in name[len(ENV_PREFIX) :].split("__")]
        if not all(keys):
            problems.append(f"environment variable {name}: malformed override (expected CTXPLANE__SECTION__KEY)")
            continue
        node = raw
        for depth, key in enumerate(keys[:-1]):
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                problems.append(f"environment variable {name}: {'.'.join(keys[: depth + 1])} is not a section")
                break
            node = child
        else:
            try:
                node[keys[-1]] = load_yaml(value) if value != "" else None
            except YAMLError:
                node[keys[-1]] = value
            overrides[tuple(keys)] = name
    return overrides, problems


def _model_at(loc: tuple[str, ...]) -> type[BaseModel] | None:
    """The settings model whose keys ``loc`` names (``()``: the sections), or None below the models."""
    model: type[BaseModel] = Settings
    for part in loc:
        field = model.model_fields.get(part)
        annotation = field.annotation if field is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def _keys_of(model: type[BaseModel]) -> list[str]:
    return [name for name, field in model.model_fields.items() if not field.exclude]


def _suggestion(loc: tuple[str, ...], env_keys: tuple[str, ...] | None) -> str:
    """``did you mean ...?`` for an unknown key: close spellings in its section, or the same key in
    another section; else the valid keys of the section. Spelled as the user wrote it (an
    environment variable, or a dotted key)."""
    model = _model_at(loc[:-1])
    if model is None:
        return ""
    key, valid = loc[-1], _keys_of(model)
    close = [(*loc[:-1], name) for name in difflib.get_close_matches(key, valid, n=2, cutoff=0.5)]
    if len(loc) == 2:  # the same key under another section (query.dsn -> store.dsn)
        close += [(section, key) for section in _keys_of(Settings)
                  if section != loc[0] and key in _keys_of(_model_at((section,)) or Settings)]
    def spell(path: tuple[str, ...]) -> str:
        if env_keys is None:
            return ".".join(path)
        return ENV_PREFIX + "__".join((*path, *env_keys[len(loc):])).upper()  # CTXPLANE__STOER__DSN -> ..STORE__DSN

    if close:
        return f" (did you mean {' or '.join(spell(path) for path in close[:3])}?)"
    what = f"keys of {'.'.join(loc[:-1])}" if loc[:-1] else "sections"
    return f" ({what}: {', '.join(valid)})"


def _source(loc: tuple[str, ...], overrides: Mapping[tuple[str, ...], str],
            in_file: Mapping[str, Any]) -> tuple[tuple[str, ...], str] | None:
    """The environment variable (its key path and name) that put the value at ``loc`` there, or
    None when the file did."""
    for keys, name in overrides.items():
        if loc[: len(keys)] == keys:  # the variable set loc or a value containing it
            return keys, name
    node: Any = in_file
    for part in loc:
        if not isinstance(node, dict) or part not in node:
            # Not in the file: a variable set something below loc (an unknown section, say).
            return next(((keys, name) for keys, name in overrides.items() if keys[: len(loc)] == loc), None)
        node = node[part]
    return None


def _problems(exc: ValidationError, where: str, overrides: Mapping[tuple[str, ...], str],
              in_file: Mapping[str, Any]) -> list[str]:
    problems: list[str] = []
    for error in exc.errors():
        loc = tuple(str(part) for part in error["loc"])
        key = ".".join(loc) or "(top level)"
        source = _source(loc, overrides, in_file) if loc else None
        origin = f"environment variable {source[1]}: " if source is not None else where
        if error["type"] == "extra_forbidden":
            problems.append(f"{origin}{key}: unknown key{_suggestion(loc, source[0] if source else None)}")
            continue
        message = error["msg"].removeprefix("Value error, ")
        value = error.get("input")
        shown = "" if isinstance(value, dict | list) or "dsn" in key or "token" in key else f" (got {value!r})"
        problems.append(f"{origin}{key}: {message}{shown}")
    return problems


def _resolve_paths(settings: Settings, base: Path, source: Path | None) -> Settings:
    def resolve(p: Path) -> Path:
        return p if p.is_absolute() else (base / p).resolve()

    store = settings.store
    if store.backend == "sqlite" and not store.sqlite_path.is_absolute():
        store = store.model_copy(update={"dsn": SecretStr(f"sqlite:///{resolve(store.sqlite_path)}")})
    listen = settings.query.listen
    if listen.startswith("unix:"):
        listen = f"unix:{resolve(Path(listen[len('unix:'):]))}"
    features = settings.features
    if features.policy is not None:
        features = features.model_copy(update={"policy": resolve(features.policy)})
    health = settings.health.model_copy(
        update={
            "policy": resolve(settings.health.policy) if settings.health.policy else None,
            "artifact_root": resolve(settings.health.artifact_root),
        }
    )
    return settings.model_copy(
        update={
            "store": store,
            "bus": settings.bus.model_copy(update={"root": resolve(settings.bus.root)}),
            "query": settings.query.model_copy(update={"listen": listen}),
            "features": features,
            "health": health,
            "source": source,
        }
    )
