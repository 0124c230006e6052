"""A key written twice in a configuration profile is an error naming its line (not a silent last-wins)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ctxplane.config.settings import load_settings
from ctxplane.contracts.exceptions import ConfigError
from ctxplane.contracts.yamlfile import YAMLError, load_yaml


def test_a_config_key_written_twice_is_refused_with_its_line(tmp_path: Path) -> None:
    config = tmp_path / "ctxplane.yaml"
    config.write_text("store:\n  dsn: sqlite:///a.sqlite\nquery:\n  workers: 1\n  workers: 2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"ctxplane.yaml: invalid YAML at line 5, column 3: duplicate key 'workers'"):
        load_settings(config, env={})


def test_the_same_key_in_two_sections_is_fine_and_merge_keys_still_work() -> None:
    assert load_yaml("a: {x: 1}\nb: {x: 2}\nbase: &b {k: 1}\nc:\n  <<: *b\n  m: 2\n") == {
        "a": {"x": 1}, "b": {"x": 2}, "base": {"k": 1}, "c": {"k": 1, "m": 2}}
    with pytest.raises(YAMLError):
        load_yaml("a: 1\na: 2\n")

