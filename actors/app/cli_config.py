"""``ctxplane config check|show``: validate a configuration without running it, print the effective one.

The main CLI (``actors/app/cli.py``) calls :func:`add_config_parser` on its sub-parsers. ``check``
reports every problem at once (one line each on stderr, exit 2), including the feature and health
policies the configuration names; ``show`` prints the configuration a ``run`` would use —
environment overrides applied (each marked with the variable that set it), relative paths
resolved, secrets masked.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import orjson
import yaml

from ctxplane.config.settings import Settings, inspect_settings, redact_dsn
from ctxplane.runtime.exceptions import ConfigError, CtxplaneError

__all__ = ("add_config_parser", "cmd_config_check", "cmd_config_show", "effective_config")

MASK = "***"


def add_config_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``config`` and its sub-commands ``check`` and ``show``."""
    config = subparsers.add_parser("config", help="validate a configuration, or print the effective one")
    commands = config.add_subparsers(dest="config_command", metavar="COMMAND", required=True)
    check = commands.add_parser(
        "check", help="validate without running: every problem at once (exit 2 if any)",
        description="Validate the configuration, its environment overrides (CTXPLANE__SECTION__KEY, and "
                    "CTXPLANE_HEALTH_* for the health thresholds) and the policies it names, without "
                    "starting anything. Prints every problem, one line each, and exits 2 if there is any.",
    )
    check.add_argument("--config", required=True, metavar="FILE", help="deployment profile (YAML)")
    check.set_defaults(func=cmd_config_check)
    show = commands.add_parser(
        "show", help="print the effective configuration (environment overrides applied, secrets masked)",
        description="Print the configuration `ctxplane run` would use: every key with its value, environment "
                    "overrides applied and marked, relative paths resolved, passwords and tokens masked.",
    )
    show.add_argument("--config", required=True, metavar="FILE", help="deployment profile (YAML)")
    show.add_argument("--json", action="store_true", help="print it as JSON")
    show.set_defaults(func=cmd_config_show)


def _policies(settings: Settings) -> tuple[list[str], list[str]]:
    """Load the policies the configuration names: (what was loaded, problems)."""
    from ctxplane.contracts.features import default_policy_path, load_policy
    from ctxplane.contracts.health import load_health_policy

    loaded, problems = [], []
    if settings.features.enabled:
        try:
            policy = load_policy(settings.features.policy or default_policy_path())
            loaded.append(f"feature policy {policy.policy_id}@{policy.revision}")
        except CtxplaneError as exc:
            problems.append(str(exc))
    try:
        health = load_health_policy(settings.health.policy)
        loaded.append(f"health policy {health.policy_id}@{health.revision}")
    except CtxplaneError as exc:
        problems.append(str(exc))
    return loaded, problems


def cmd_config_check(args: argparse.Namespace) -> int:
    """Print ``FILE: valid (...)`` and exit 0, or raise :class:`ConfigError` with every problem."""
    report = inspect_settings(args.config)
    problems = list(report.problems)
    loaded: list[str] = []
    if report.settings is not None:
        loaded, policy_problems = _policies(report.settings)
        problems += policy_problems
    if problems:
        count = f"{len(problems)} problems" if len(problems) > 1 else "1 problem"
        raise ConfigError("\n".join([*problems, f"{args.config}: {count}; nothing was started"]))
    overrides = ", ".join(sorted(report.overrides.values())) or "none"
    print(f"{args.config}: valid ({'; '.join(loaded)}; environment overrides: {overrides})")
    return 0


def effective_config(settings: Settings) -> dict[str, Any]:
    """The settings as plain data, secrets masked: the DSN's password, ``query.auth_token``, and any
    credentials in ``bus.endpoint_url``."""
    data: dict[str, Any] = settings.model_dump(mode="json")
    data["store"]["dsn"] = redact_dsn(data["store"]["dsn"])
    if data["query"].get("auth_token") is not None:
        data["query"]["auth_token"] = MASK
    if data["bus"].get("endpoint_url"):
        data["bus"]["endpoint_url"] = redact_dsn(data["bus"]["endpoint_url"])
    return data


def _yaml_value(value: Any) -> str:
    # Flow style on one line: every key of a section is one line, so it can carry its comment.
    text: str = yaml.safe_dump(value, default_flow_style=True, width=1 << 20, allow_unicode=True)
    return text.strip().removesuffix("...").strip()


def cmd_config_show(args: argparse.Namespace) -> int:
    report = inspect_settings(args.config)
    if report.problems:
        raise ConfigError("\n".join(report.problems))
    assert report.settings is not None
    data = effective_config(report.settings)
    if args.json:
        sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    lines = [f"# effective configuration of {args.config}: environment overrides applied, relative paths "
             "resolved, secrets masked"]
    for section, values in data.items():
        lines.append(f"{section}:")
        for key, value in values.items():
            line = f"  {key}: {_yaml_value(value)}"
            dotted = f"{section}.{key}"
            variables = sorted(name for path, name in report.overrides.items()
                               if path == dotted or path.startswith(f"{dotted}."))
            if variables:
                line += f"  # from {', '.join(variables)}"
            elif key == "policy" and value is None:
                line += "  # the default policy shipped with the package"
            lines.append(line)
    print("\n".join(lines))
    return 0
