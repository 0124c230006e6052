"""The one YAML reader of the project: safe, and strict about duplicate keys.

PyYAML silently keeps the last of two equal keys, so a second ``revision:`` line or a config key
written twice would quietly win. Every file we read (configuration profiles, policies, rebuild
manifests) goes through :func:`load_yaml`, which refuses that with the line of the duplicate.
"""

from __future__ import annotations

from typing import Any

import yaml

__all__ = ("YAMLError", "load_yaml", "yaml_problem")

YAMLError = yaml.YAMLError


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[tuple[str, str]] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                ident = (key_node.tag, key_node.value)
                if ident in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key_node.value!r}", key_node.start_mark
                    )
                seen.add(ident)
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str | bytes) -> Any:
    """Parse one YAML document (safe tags only; duplicate keys refused).

    Raises:
        yaml.YAMLError: invalid YAML or a duplicate key; :func:`yaml_problem` words it.
    """
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def yaml_problem(exc: yaml.YAMLError) -> str:
    """One line for a YAML error: what is wrong and the line (and column) where."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        problem = exc.problem or exc.context or "syntax error"
        return f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return "invalid YAML: " + " ".join(str(exc).split())
