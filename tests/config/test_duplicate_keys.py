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



def test_a_key_written_twice_in_a_health_policy_or_a_replay_manifest_is_refused(tmp_path: Path) -> None:
    from ctxplane.actors.operate.replay_manifest import load_manifest
    from ctxplane.contracts.health import default_health_policy_path, load_health_policy
    from ctxplane.runtime.exceptions import UsageError

    shipped = default_health_policy_path().read_text(encoding="utf-8")
    policy = tmp_path / "health.yaml"
    policy.write_text(shipped + "\nwindow_s: 60\nwindow_s: 120\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"health policy .*health.yaml: invalid YAML at line \d+, column 1: duplicate key 'window_s'$"):
        load_health_policy(policy, env={})
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text("topics: [{topic: t, partitions: [{partition: 0, to_offset: 4}]}]\ntopics: []\n", encoding="utf-8")
    with pytest.raises(UsageError, match=r"manifest.yaml: invalid YAML/JSON at line 2: duplicate key 'topics'"):
        load_manifest(manifest)
