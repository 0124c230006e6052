"""The shipped alert rules and dashboard are well-formed and only use metrics the process exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def _exported() -> set[str]:
    """Every sample name a process's /metrics can carry (from the Metrics object itself)."""
    from ctxplane.actors.serve.metrics import Metrics
    from ctxplane.runtime.kernel import Registry

    names: set[str] = set()
    for family in Metrics(Registry()).registry.collect():
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}.get(family.type, ("",))
        names.update(family.name + suffix for suffix in suffixes)
    return names


EXPORTED = _exported()


def _metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\bctxplane_[a-z_]+", expr))


def test_alert_rules_are_well_formed() -> None:
    rules = yaml.safe_load((ROOT / "ops/prometheus/alerts.yml").read_text())
    alerts = [r for g in rules["groups"] for r in g["rules"]]
    assert len(alerts) >= 8
    for rule in alerts:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"} and rule["annotations"]["summary"]
        assert _metric_names(rule["expr"]) <= EXPORTED, rule["alert"]


def test_dashboard_uses_exported_metrics() -> None:
    board = json.loads((ROOT / "ops/grafana/dashboard.json").read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p["targets"]]
    assert exprs and all(_metric_names(e) <= EXPORTED for e in exprs)


def _promtool() -> str | None:
    """promtool on PATH, or the one ops/promtool_up.sh put into .venv/bin (`make test` runs it)."""
    local = ROOT / ".venv" / "bin" / "promtool"
    return shutil.which("promtool") or (str(local) if local.exists() else None)


needs_promtool = pytest.mark.skipif(_promtool() is None, reason="promtool not installed (ops/promtool_up.sh gets it)")


def _alerts() -> list[dict[str, object]]:
    rules = yaml.safe_load((ROOT / "ops/prometheus/alerts.yml").read_text())
    return [r for g in rules["groups"] for r in g["rules"]]


def test_every_alert_has_a_promtool_case_that_fires_it() -> None:
    cases = yaml.safe_load((ROOT / "ops/prometheus/alerts_test.yml").read_text())
    fired = {t["alertname"] for case in cases["tests"] for t in case["alert_rule_test"] if t.get("exp_alerts")}
    assert {str(rule["alert"]) for rule in _alerts()} <= fired


@needs_promtool
def test_promtool_accepts_the_rules() -> None:
    result = subprocess.run([_promtool(), "check", "rules", str(ROOT / "ops/prometheus/alerts.yml")],  # type: ignore[list-item]
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_rule_tests_pass() -> None:
    result = subprocess.run([_promtool(), "test", "rules", str(ROOT / "ops/prometheus/alerts_test.yml")],  # type: ignore[list-item]
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_imports_into_any_grafana() -> None:
    text = (ROOT / "ops/grafana/dashboard.json").read_text()
    board = json.loads(text)
    inputs = {i["name"] for i in board["__inputs"] if i["type"] == "datasource" and i["pluginId"] == "prometheus"}
    assert inputs and set(re.findall(r"\$\{(DS_[A-Z_]+)\}", text)) <= inputs  # every placeholder is asked for
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    chosen = {"type": "prometheus", "uid": "${datasource}"}
    assert variables["instance"]["datasource"] == chosen
    for panel in board["panels"]:
        assert panel["datasource"] == chosen and all(t["datasource"] == chosen for t in panel["targets"]), panel["title"]


def test_sample_prometheus_config_scrapes_the_job_the_alerts_select() -> None:
    config = yaml.safe_load((ROOT / "ops/prometheus/prometheus.yml").read_text())
    assert [ROOT / "ops/prometheus" / f for f in config["rule_files"]] == [ROOT / "ops/prometheus/alerts.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert "ctxplane" in jobs
    selectors = {m for rule in _alerts() for m in re.findall(r'job="([^"]+)"', str(rule["expr"]))}
    assert selectors == {"ctxplane"}
    # The profiles that expose metrics are the ports the sample scrapes.
    targets = set(jobs["ctxplane"]["static_configs"][0]["targets"])
    for profile in ("local", "postgres", "kinesis"):
        listen = yaml.safe_load((ROOT / f"config/profiles/{profile}.yaml").read_text())["metrics"]["listen"]
        assert listen in targets, profile


@needs_promtool
def test_promtool_accepts_the_sample_prometheus_config() -> None:
    result = subprocess.run([_promtool(), "check", "config", str(ROOT / "ops/prometheus/prometheus.yml")],  # type: ignore[list-item]
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
