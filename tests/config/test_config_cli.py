"""Configuration mistakes all at once: `ctxplane config check` / `config show` and `run` refusing a bad
config, through the real CLI; the README and docs name only keys that exist."""

from __future__ import annotations

import re
from pathlib import Path

from ctxplane.config.settings import Settings
from tests.support.process import ctxplane, write_config

ROOT = Path(__file__).resolve().parents[2]

BAD = """\
store:
  dsn: sqlite:///s.sqlite
ingest:
  batch_size: 500
qurey:
  listen: unix:q.sock
query:
  workers: zero
  dsn: sqlite:///elsewhere.sqlite
"""


def _lines(stderr: str) -> list[str]:
    return [line.removeprefix("ctxplane: ") for line in stderr.strip().splitlines()]


def test_config_check_reports_every_problem_at_once_with_suggestions_and_their_source(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(BAD, encoding="utf-8")
    env = {"CTXPLANE__LEASES__DURATION": "5", "CTXPLANE__STOER__DSN": "x"}
    result = ctxplane("config", "check", "--config", str(config), env=env)
    assert result.returncode == 2 and result.stdout == ""
    assert _lines(result.stderr) == [
        f"{config}: query.workers: Input should be a valid integer, unable to parse string as an integer (got 'zero')",
        f"{config}: query.dsn: unknown key (did you mean store.dsn?)",
        f"{config}: ingest.batch_size: unknown key (did you mean ingest.batch_max_bytes or ingest.batch_max_records?)",
        "environment variable CTXPLANE__LEASES__DURATION: leases.duration: unknown key"
        " (did you mean CTXPLANE__LEASES__DURATION_S?)",
        f"{config}: qurey: unknown key (did you mean query?)",
        "environment variable CTXPLANE__STOER__DSN: stoer: unknown key (did you mean CTXPLANE__STORE__DSN?)",
        f"{config}: 6 problems; nothing was started",
    ]
    # `run` refuses the same configuration with the same lines, before anything starts.
    run = ctxplane("run", "--config", str(config), "--once", env=env)
    assert run.returncode == 2 and _lines(run.stderr) == _lines(result.stderr)[:-1]
    assert not (tmp_path / "s.sqlite").exists()


def test_config_check_passes_a_valid_config_and_checks_the_policies_it_names(tmp_path: Path) -> None:
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 's.sqlite'}")
    ok = ctxplane("config", "check", "--config", str(config), env={"CTXPLANE__QUERY__WORKERS": "2"})
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip().startswith(f"{config}: valid (feature policy ofp.features.v0@r1; health policy ")
    assert ok.stdout.strip().endswith("environment overrides: CTXPLANE__QUERY__WORKERS)")
    assert not (tmp_path / "s.sqlite").exists()  # validated, not run
    policy = tmp_path / "policy.yaml"
    policy.write_text("policy_id: p\nfeature_groups: []\n", encoding="utf-8")  # no revision
    broken = write_config(tmp_path, f"sqlite:///{tmp_path / 's.sqlite'}", features={"policy": str(policy)})
    bad = ctxplane("config", "check", "--config", str(broken), env={"CTXPLANE_HEALTH_WATERMARK_AGE_S_RED": "soon"})
    assert bad.returncode == 2
    lines = _lines(bad.stderr)
    assert len(lines) == 3 and "revision" in lines[0] and lines[1].startswith("CTXPLANE_HEALTH_WATERMARK_AGE_S_RED")
    assert lines[2] == f"{broken}: 2 problems; nothing was started"


def test_config_show_prints_the_effective_config_with_overrides_marked_and_secrets_masked(tmp_path: Path) -> None:
    config = write_config(tmp_path, "postgresql://ctxp:FilePassw0rd@127.0.0.1:5432/d",
                          query={"auth_token": "file-token-123"})
    env = {"CTXPLANE__STORE__DSN": "postgresql://svc:EnvPassw0rd@db.internal:5432/ctx", "CTXPLANE__INGEST__BATCH_MAX_RECORDS": "500"}
    shown = ctxplane("config", "show", "--config", str(config), env=env)
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    for secret in ("FilePassw0rd", "EnvPassw0rd", "file-token-123"):
        assert secret not in out
    lines = out.splitlines()
    assert "  dsn: postgresql://svc:***@db.internal:5432/ctx  # from CTXPLANE__STORE__DSN" in lines
    assert "  batch_max_records: 500  # from CTXPLANE__INGEST__BATCH_MAX_RECORDS" in lines
    assert "  auth_token: '***'" in lines
    assert f"  root: {tmp_path / 'eb'}" in lines  # resolved
    assert "  workers: 1" in lines and "  max_deadline_ms: 60000" in lines  # defaults and file values alike
    # Every section and key of the settings is shown.
    sections = [line[:-1] for line in lines if line and not line.startswith((" ", "#"))]
    assert sections == [name for name, field in Settings.model_fields.items() if not field.exclude]
    assert ctxplane("config", "show", "--config", str(tmp_path / "nope.yaml")).returncode == 2


_SECTIONS = {name: field.annotation for name, field in Settings.model_fields.items() if not field.exclude}
# `section.key` in prose or code spans; not a file name (docs/health.md, features.v0.yaml) or a module.
_DOTTED = re.compile(r"(?<![\w/.\-])(" + "|".join(_SECTIONS) + r")\.([a-z_][a-z0-9_]*)\b(?!\.(?:md|py|ya?ml|json|jsonl|sql)\b)")
_ENV = re.compile(r"CTXPLANE__([A-Z0-9_]+?)__([A-Z0-9_]+)")


def test_the_readme_docs_and_profiles_name_only_config_keys_that_exist() -> None:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "ops" / "RUNBOOK.md",
             *sorted((ROOT / "config" / "profiles").glob("*.yaml"))]
    wrong = []
    for file in files:
        for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
            if "unknown key" in line:
                continue  # an example of the error a wrong key gets
            for section, key in _DOTTED.findall(line):
                if key not in _SECTIONS[section].model_fields:  # type: ignore[union-attr]
                    wrong.append(f"{file.relative_to(ROOT)}:{number}: {section}.{key}")
            for section, key in _ENV.findall(line):
                if (section, key) == ("SECTION", "KEY"):
                    continue
                model = _SECTIONS.get(section.lower())
                if model is None or key.lower() not in model.model_fields:  # type: ignore[union-attr]
                    wrong.append(f"{file.relative_to(ROOT)}:{number}: CTXPLANE__{section}__{key}")
    assert wrong == []
    # The checker itself catches the key the README once documented.
    assert _DOTTED.findall("set `ingest.batch_size` to 500") == [("ingest", "batch_size")]


def test_the_configuration_reference_lists_every_key_with_its_default() -> None:
    from ctxplane.actors.app.cli_config import _yaml_value

    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `([a-z_]+\.[a-z_]+)` \| `(.*?)` \|", text, re.M))
    defaults = Settings()
    expected = {f"{section}.{key}": _yaml_value(value)
                for section in _SECTIONS for key, value in getattr(defaults, section).model_dump(mode="json").items()}
    assert rows == expected
