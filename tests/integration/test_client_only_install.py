"""A decision service installs only the client: ``pip install ctxplane`` without the ``server`` extra.

Each case runs a fresh interpreter in which every module of the ``server`` extra (read from
pyproject.toml) fails to import, as it would in such an install, and talks to a real
``ctxplane run``: the README's client example and ``ctxplane query`` work; ``ctxplane run`` says
which install it needs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from ctxplane.actors.app.cli import SERVER_MODULES
from tests.integration.test_client_example import _blocks
from tests.support.process import CtxplaneProcess, ctxplane, write_config

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def _server_modules() -> set[str]:
    """The top-level modules the ``server`` extra's distributions install."""
    extra = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]["optional-dependencies"]["server"]
    names = {Requirement(spec).name.lower().replace("_", "-") for spec in extra}
    modules = {module for module, dists in packages_distributions().items()
               if any(d.lower().replace("_", "-") in names for d in dists)}
    assert len(modules) >= len(names), (names, modules)  # every server distribution is installed here
    return modules


def _without_server(code: str) -> list[str]:
    """``python -c`` that runs ``code`` with the server extra's modules unimportable."""
    blocker = f"""
import importlib.abc, sys
class _ServerInstallMissing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.partition(".")[0] in {sorted(_server_modules())!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, _ServerInstallMissing())
"""
    return [sys.executable, "-c", blocker + code]


def test_the_cli_names_every_server_module() -> None:
    assert _server_modules() <= SERVER_MODULES


def test_the_progress_default_of_the_cli_is_the_reporters() -> None:
    from ctxplane.actors.app.cli_replay import PROGRESS_EVERY_S
    from ctxplane.actors.operate.reporting import DEFAULT_EVERY_S

    assert PROGRESS_EVERY_S == DEFAULT_EVERY_S


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("client_only")
    demo = ctxplane("demo", "--flows", "50", "--root", str(root / "eb"))
    assert demo.returncode == 0, demo.stderr
    pins = json.loads(demo.stdout.splitlines()[1].removeprefix("pins: "))
    config = write_config(root, f"sqlite:///{root / 'ctxplane.sqlite'}")
    assert ctxplane("run", "--config", str(config), "--once").returncode == 0
    return config, pins


def test_the_readme_client_example_runs_without_the_server_install(served: tuple[Path, dict[str, str]]) -> None:
    config, _pins = served
    code, printed = _blocks("### Python client")
    with CtxplaneProcess(config):
        result = subprocess.run(_without_server(code.replace("runs/demo/ctxplane.yaml", str(config))),
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == printed


def test_ctxplane_query_runs_without_the_server_install(served: tuple[Path, dict[str, str]]) -> None:
    config, pins = served
    request = {"op": "resolve_flow_binding", "request_id": "r1", "flow_id": "flow-1", "pins": pins}
    cli = f"from ctxplane.actors.app.cli import main; sys.exit(main({['query', '--config', str(config), json.dumps(request)]!r}))"
    with CtxplaneProcess(config):
        result = subprocess.run(_without_server(cli), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["status"] == "READY"


def test_ctxplane_run_says_it_needs_the_server_install(served: tuple[Path, dict[str, str]]) -> None:
    config, _pins = served
    cli = f"from ctxplane.actors.app.cli import main; sys.exit(main({['run', '--config', str(config), '--once']!r}))"
    result = subprocess.run(_without_server(cli), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "pip install 'ctxplane[server]'" in result.stderr
    assert "Traceback" not in result.stderr
