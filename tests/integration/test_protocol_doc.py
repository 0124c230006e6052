"""docs/protocol.md is true: every example request, sent to a real `ctxplane run` over the demo
workload (as `make demo` writes it), gets the answer the page shows; the page names every reason and
error code there is."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from ctxplane.contracts.reasons import Reason
from ctxplane.runtime.client import Client
from tests.support.process import CtxplaneProcess, ctxplane

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
_EXAMPLE = re.compile(r"<!-- example (?P<name>[\w-]+)(?: (?P<mode>abridged|shape))? -->\nRequest:\n\n```json\n(?P<request>.*?)\n```"
                      r"\n\nAnswer:\n\n```json\n(?P<answer>.*?)\n```", re.S)
# Wall-clock times, process ids, ages and lag as of the moment of the answer: present, value not compared.
VOLATILE = frozenset({"resolved_at_utc", "served_at_utc", "checked_at_utc", "counted_since_utc", "pid", "connections",
                      "watermark_age_s", "checkpoint_age_s", "last_commit_age_s", "lag"})


def _examples() -> list[tuple[str, str, dict[str, Any], dict[str, Any]]]:
    found = [(m["name"], m["mode"] or "exact", json.loads(m["request"]), json.loads(m["answer"]))
             for m in _EXAMPLE.finditer(DOC.read_text(encoding="utf-8"))]
    assert len(found) == DOC.read_text(encoding="utf-8").count("<!-- example "), "an example the parser does not see"
    return found


def _match(doc: Any, real: Any, mode: str, path: str = "") -> list[str]:
    """Differences between a documented answer and the real one (``abridged``: the page may leave
    keys out; ``shape``: only the keys are compared)."""
    if isinstance(doc, dict):
        if not isinstance(real, dict):
            return [f"{path}: not an object"]
        problems = [f"{path}.{key}: missing" for key in doc if key not in real]
        if mode == "exact":
            problems += [f"{path}.{key}: not documented" for key in real if key not in doc]
        for key in doc:
            if key in real and key not in VOLATILE:
                problems += _match(doc[key], real[key], mode, f"{path}.{key}")
        return problems
    if isinstance(doc, list) and mode == "shape":
        if not isinstance(real, list) or (doc and not real):
            return [f"{path}: not a non-empty list"]
        return [p for i, item in enumerate(doc) for p in _match(item, real[min(i, len(real) - 1)], mode, f"{path}[{i}]")]
    if mode == "shape":
        return []
    if isinstance(doc, list):
        if not isinstance(real, list) or len(doc) != len(real):
            return [f"{path}: {real!r} instead of {doc!r}"]
        return [p for i, (d, r) in enumerate(zip(doc, real, strict=True)) for p in _match(d, r, mode, f"{path}[{i}]")]
    return [] if doc == real and type(doc) is type(real) else [f"{path}: {real!r} instead of {doc!r}"]


def _demo(tmp_path: Path) -> Path:
    """The demo deployment of ops/demo.py: 50 flows, defaults everywhere else."""
    assert ctxplane("demo", "--flows", "50", "--root", str(tmp_path / "eb")).returncode == 0
    config = tmp_path / "ctxplane.yaml"
    config.write_text(yaml.safe_dump({
        "store": {"dsn": "sqlite:///ctxplane.sqlite"}, "bus": {"root": "eb"}, "query": {"listen": "unix:ctxplane.sock"},
        "metrics": {"listen": None}, "health": {"artifact_root": "."}, "logging": {"format": "json", "level": "info"},
    }), encoding="utf-8")
    assert ctxplane("run", "--config", str(config), "--once").returncode == 0
    return config


def test_every_documented_request_gets_the_documented_answer(tmp_path: Path) -> None:
    config = _demo(tmp_path)
    examples = _examples()
    ops = {example[2].get("op") or example[2].get("query_kind") for example in examples}
    assert {"resolve_flow_binding", "fetch_join_frame", "get_features", "basis", "health"} <= ops
    problems: dict[str, list[str]] = {}
    with CtxplaneProcess(config), Client(f"unix:{tmp_path / 'ctxplane.sock'}", timeout_s=30) as client:
        for name, mode, request, documented in examples:
            different = _match(documented, client.request(request), mode)
            if different:
                problems[name] = different
    assert problems == {}


def test_the_page_names_every_reason_and_error_code() -> None:
    text = DOC.read_text(encoding="utf-8")
    codes = {reason.value for reason in Reason} | {
        "MISSING_PINS", "UNAVAILABLE", "UNAUTHORIZED", "FORBIDDEN", "DRILLS_DISABLED", "MISSING_BINDING",
        "MISSING_JOIN_FRAME", "CONFLICT", "MISSING_FEATURE_STATE", "MISSING_FEATURE_GROUP", "STALE_INPUT_BASIS",
        "AS_OF_BEYOND_RETENTION"}
    assert sorted(code for code in codes if f"`{code}`" not in text) == []
