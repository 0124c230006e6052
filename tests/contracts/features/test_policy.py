"""Feature policy: pinned format, one-line errors, digest (contracts/features/policy.py)."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from typing import Any, Callable

import orjson
import pytest
import yaml
from pydantic import ValidationError

from ctxplane.contracts.features import (
    DEFAULT_AGGREGATIONS,
    FeaturePolicy,
    PolicyError,
    default_policy_path,
    load_policy,
    parse_duration,
    parse_policy,
    run_config_digest,
)
from ctxplane.runtime.exceptions import ConfigError

DEFAULT_DOC: dict[str, Any] = yaml.safe_load(default_policy_path().read_text())


def _doc() -> dict[str, Any]:
    return copy.deepcopy(DEFAULT_DOC)


def _write(tmp_path: Path, doc: object, name: str = "features.v0.yaml") -> Path:
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False))
    return path


def _error(tmp_path: Path, doc: object) -> str:
    with pytest.raises(PolicyError) as info:
        load_policy(_write(tmp_path, doc))
    message = str(info.value)
    assert "\n" not in message, "errors are one line"
    return message


# --------------------------------------------------------------------------------------------
# the default policy
# --------------------------------------------------------------------------------------------


def test_default_policy_loads() -> None:
    policy = load_policy(default_policy_path())
    assert (policy.policy_id, policy.revision) == ("ofp.features.v0", "r1")
    core = policy.group("core_features", "v1")
    assert core is not None
    assert core.key_types == ("flow_id",)
    assert [w.window for w in core.windows] == ["1h", "24h", "7d"]
    assert [(w.duration_seconds, w.ttl_seconds) for w in core.windows] == [
        (3600, 3600),
        (86400, 86400),
        (604800, 604800),
    ]
    assert core.aggregations == ("event_count", "amount_sum", "last_event_ts_utc")
    velocity = policy.group("entity_velocity", "v1")
    assert velocity is not None
    assert velocity.key_types == (
        "account_id", "device_id", "instrument_id", "ip_id", "merchant_id",
    )
    assert velocity.aggregations == (
        "count", "amount_sum", "amount_min", "amount_max", "last_event_ts_utc",
    )
    assert policy.group("core_features", "v2") is None
    assert policy.key_types() == (
        "account_id", "device_id", "flow_id", "instrument_id", "ip_id", "merchant_id",
    )
    assert policy.max_ttl_seconds() == 7 * 86400
    assert default_policy_path().is_file()


def test_digest_is_sha256_of_the_canonical_content() -> None:
    policy = load_policy(default_policy_path())
    content = policy.canonical_content()
    assert content["feature_groups"][1] == {
        "name": "entity_velocity",
        "version": "v1",
        "key_types": ["account_id", "device_id", "instrument_id", "ip_id", "merchant_id"],
        "windows": [
            {"window": "1h", "duration_seconds": 3600, "ttl_seconds": 3600},
            {"window": "24h", "duration_seconds": 86400, "ttl_seconds": 86400},
            {"window": "7d", "duration_seconds": 604800, "ttl_seconds": 604800},
        ],
        "aggregations": ["count", "amount_sum", "amount_min", "amount_max", "last_event_ts_utc"],
    }
    expected = hashlib.sha256(orjson.dumps(content, option=orjson.OPT_SORT_KEYS)).hexdigest()
    assert policy.content_digest == expected
    assert policy.rev() == {
        "policy_id": "ofp.features.v0",
        "revision": "r1",
        "content_digest": expected,
    }


def test_digest_is_stable_across_spellings() -> None:
    base = parse_policy(_doc())
    doc = _doc()
    core = doc["feature_groups"][0]
    core.pop("key_type")
    core["key_types"] = ["flow_id"]
    core["windows"] = [
        {"window": "1h", "duration": "60m", "ttl": "3600s"},
        {"window": "24h", "duration": "1d"},  # ttl defaults to duration
        {"window": "7d", "duration": "168h"},
    ]
    doc["feature_groups"][1]["key_types"].reverse()
    assert parse_policy(doc).content_digest == base.content_digest
    assert parse_policy(_doc()).content_digest == base.content_digest


_CHANGES: list[tuple[str, Callable[[dict[str, Any]], None]]] = [
    ("policy_id", lambda d: d.update(policy_id="ofp.features.v1")),
    ("revision", lambda d: d.update(revision="r2")),
    ("group name", lambda d: d["feature_groups"][0].update(name="core")),
    ("group version", lambda d: d["feature_groups"][0].update(version="v2")),
    ("key type", lambda d: d["feature_groups"][0].update(key_type="event_id")),
    ("key types", lambda d: d["feature_groups"][1]["key_types"].pop()),
    ("window name", lambda d: d["feature_groups"][0]["windows"][0].update(window="60m")),
    ("duration", lambda d: d["feature_groups"][0]["windows"][0].update(duration="30m")),
    ("ttl", lambda d: d["feature_groups"][0]["windows"][0].update(ttl="2h")),
    ("window removed", lambda d: d["feature_groups"][0]["windows"].pop()),
    ("aggregation", lambda d: d["feature_groups"][0]["aggregations"].append("amount_max")),
    ("aggregation order", lambda d: d["feature_groups"][0]["aggregations"].reverse()),
    ("group order", lambda d: d["feature_groups"].reverse()),
]


@pytest.mark.parametrize(("what", "change"), _CHANGES, ids=[c[0] for c in _CHANGES])
def test_digest_changes_with_content(what: str, change: Callable[[dict[str, Any]], None]) -> None:
    doc = _doc()
    change(doc)
    assert parse_policy(doc).content_digest != parse_policy(_doc()).content_digest


def test_origin_file_loads_with_origin_defaults(tmp_path: Path) -> None:
    # The origin's features_v0.yaml: no aggregations, windows may be tokens.
    origin = """
policy_id: ofp.features.v0
revision: r1
feature_groups:
  - name: core_features
    version: v1
    key_type: flow_id
    windows:
      - {window: 1h, duration: 1h, ttl: 1h}
      - 24h
      - {duration: 7d}
"""
    policy = load_policy(_write(tmp_path, origin))
    core = policy.group("core_features", "v1")
    assert core is not None
    assert core.aggregations == DEFAULT_AGGREGATIONS
    assert DEFAULT_AGGREGATIONS == ("event_count", "amount_sum", "last_event_ts_utc")
    assert [(w.window, w.duration_seconds, w.ttl_seconds) for w in core.windows] == [
        ("1h", 3600, 3600),
        ("24h", 86400, 86400),
        ("7d", 604800, 604800),
    ]
    # No key type and no windows: flow_id and 1h/24h/7d, as the origin loader does.
    bare = parse_policy(
        {"policy_id": "p", "revision": "r", "feature_groups": [{"name": "g", "version": "v1"}]}
    )
    assert bare.feature_groups[0].key_types == ("flow_id",)
    assert [w.window for w in bare.feature_groups[0].windows] == ["1h", "24h", "7d"]


def test_event_count_is_an_alias_of_count() -> None:
    doc = _doc()
    doc["feature_groups"][0]["aggregations"] = ["count", "event_count"]
    assert parse_policy(doc).feature_groups[0].aggregations == ("count", "event_count")


def test_policy_is_frozen() -> None:
    policy = load_policy(default_policy_path())
    with pytest.raises(ValidationError, match="frozen"):
        policy.revision = "r2"
    assert hash(policy.feature_groups[0].windows[0]) == hash(policy.feature_groups[0].windows[0])


# --------------------------------------------------------------------------------------------
# errors: one line naming the file and the key
# --------------------------------------------------------------------------------------------

_INVALID: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("missing revision", lambda d: d.pop("revision"), "revision: required key is missing"),
    ("missing policy_id", lambda d: d.pop("policy_id"), "policy_id: required key is missing"),
    ("numeric revision", lambda d: d.update(revision=2), "revision: expected a string, got int"),
    (
        "ttl shorter than duration",
        lambda d: d["feature_groups"][1]["windows"][0].update(ttl="30m"),
        "feature_groups[1].windows[0].ttl: ttl 30m is shorter than duration 1h",
    ),
    (
        "bad duration",
        lambda d: d["feature_groups"][0]["windows"][2].update(duration="7 days"),
        "feature_groups[0].windows[2].duration: '7 days' is not a duration",
    ),
    (
        "zero duration",
        lambda d: d["feature_groups"][0]["windows"][0].update(duration="0h", ttl="1h"),
        "feature_groups[0].windows[0].duration: '0h' is not a duration",
    ),
    (
        "numeric duration",
        lambda d: d["feature_groups"][0]["windows"][0].update(duration=3600),
        "feature_groups[0].windows[0].duration: 3600 is not a duration",
    ),
    (
        "unknown aggregation",
        lambda d: d["feature_groups"][1]["aggregations"].append("amount_avg"),
        "feature_groups[1].aggregations[5]: unknown aggregation 'amount_avg'; known: ",
    ),
    (
        "duplicate aggregation",
        lambda d: d["feature_groups"][1]["aggregations"].append("count"),
        "feature_groups[1].aggregations[5]: duplicate aggregation 'count'",
    ),
    (
        "duplicate window",
        lambda d: d["feature_groups"][0]["windows"].append({"window": "24h", "duration": "12h"}),
        "feature_groups[0].windows[3].window: duplicate window '24h' (also windows[1])",
    ),
    (
        "duplicate group",
        lambda d: d["feature_groups"].append(copy.deepcopy(d["feature_groups"][0])),
        "feature_groups[2]: duplicate group core_features v1 (also feature_groups[0])",
    ),
    (
        "unknown top-level key",
        lambda d: d.update(feature_group=[]),
        "feature_group: unknown key; allowed: policy_id, revision, feature_groups",
    ),
    (
        "unknown group key",
        lambda d: d["feature_groups"][0].update(window=["1h"]),
        "feature_groups[0].window: unknown key; allowed: name, version, key_type, key_types, "
        "windows, aggregations",
    ),
    (
        "unknown window key",
        lambda d: d["feature_groups"][0]["windows"][1].update(ttl_s=5),
        "feature_groups[0].windows[1].ttl_s: unknown key; allowed: window, duration, ttl",
    ),
    (
        "key_type and key_types",
        lambda d: d["feature_groups"][0].update(key_types=["flow_id"]),
        "feature_groups[0].key_types: give key_type or key_types, not both",
    ),
    (
        "empty key_types",
        lambda d: d["feature_groups"][1].update(key_types=[]),
        "feature_groups[1].key_types: key_types must name at least one key type",
    ),
    (
        "bad key type",
        lambda d: d["feature_groups"][1]["key_types"].append("ip:id"),
        "feature_groups[1].key_types[5]: 'ip:id' is not a valid key type",
    ),
    (
        "no groups",
        lambda d: d.update(feature_groups=[]),
        "feature_groups: feature_groups must name at least one group",
    ),
    (
        "no windows",
        lambda d: d["feature_groups"][0].update(windows=[]),
        "feature_groups[0].windows: windows must name at least one window",
    ),
    (
        "group not a mapping",
        lambda d: d["feature_groups"].append("core_features"),
        "feature_groups[2]: expected a mapping, got str",
    ),
]


@pytest.mark.parametrize(("what", "change", "expected"), _INVALID, ids=[c[0] for c in _INVALID])
def test_invalid_policy_names_file_and_key(
    tmp_path: Path, what: str, change: Callable[[dict[str, Any]], None], expected: str
) -> None:
    doc = _doc()
    change(doc)
    message = _error(tmp_path, doc)
    path = str(tmp_path / "features.v0.yaml")
    assert message.startswith(f"{path}: {expected}"), message


def test_several_errors_report_the_first_and_count_the_rest(tmp_path: Path) -> None:
    doc = _doc()
    doc.pop("revision")
    doc["feature_groups"][0]["aggregations"] = ["avg"]
    message = _error(tmp_path, doc)
    assert message.endswith("revision: required key is missing (and 1 more)")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(PolicyError, match=r"nope\.yaml: policy file not found$"):
        load_policy(path)


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read policy file"):
        load_policy(tmp_path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("policy_id: [unclosed\n", "invalid YAML at line 2, column 1"),
        ("policy_id: a\n  revision: r1\n", "invalid YAML at line 2, column 11"),
        (
            "policy_id: a\nrevision: r1\nrevision: r2\n",
            "line 3, column 1: duplicate key 'revision'",
        ),
    ],
)
def test_bad_yaml(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in _error(tmp_path, text)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "features.v0.yaml"
    path.write_bytes(b"policy_id: \xff\xfe\xfa\n")
    with pytest.raises(PolicyError, match="invalid YAML"):
        load_policy(path)


@pytest.mark.parametrize(("text", "got"), [("", "an empty document"), ("- a\n- b\n", "a list")])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str, got: str) -> None:
    message = _error(tmp_path, text)
    assert message.endswith(
        f"expected a mapping with policy_id, revision and feature_groups, got {got}"
    )


def test_policy_error_is_a_config_error_and_a_value_error() -> None:
    assert issubclass(PolicyError, ConfigError)
    assert issubclass(PolicyError, ValueError)


def test_direct_construction_still_validates() -> None:
    with pytest.raises(ValueError):
        FeaturePolicy.model_validate({"policy_id": "p", "feature_groups": []})


# --------------------------------------------------------------------------------------------
# durations and run_config_digest
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("15m", 900), ("1h", 3600), ("7d", 604800), ("24h", 86400)]
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text", ["", "1", "h", "0s", "01h", "-1h", "1.5h", "1H", "1w", " 1h", 60, None]
)
def test_parse_duration_rejects(text: object) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


def test_run_config_digest() -> None:
    policy = load_policy(default_policy_path())
    topics = ["fp.bus.traffic.fraud.v1", "fp.bus.traffic.baseline.v1"]
    d = run_config_digest(policy, topics=topics, bus_kind="file", platform_run_id=None)
    expected = {
        "feature_def_policy_rev": policy.rev(),
        "topics": sorted(topics),
        "bus_kind": "file",
        "platform_run_id": None,
    }
    assert d == hashlib.sha256(orjson.dumps(expected, option=orjson.OPT_SORT_KEYS)).hexdigest()
    assert d == run_config_digest(
        policy, topics=list(reversed(topics)), bus_kind="file", platform_run_id=None
    )
    assert d != run_config_digest(policy, topics=topics, bus_kind="kinesis", platform_run_id=None)
    assert d != run_config_digest(
        policy, topics=topics, bus_kind="file", platform_run_id="platform_20260201T000000Z"
    )
    assert d != run_config_digest(policy, topics=topics[:1], bus_kind="file", platform_run_id=None)
    other = parse_policy({**_doc(), "revision": "r2"})
    assert d != run_config_digest(other, topics=topics, bus_kind="file", platform_run_id=None)
