"""The README's Python client example runs as written against a real `ctxplane run` over the demo
workload and prints what the README says; `ctxplane demo` and `ctxplane runs` print the pins it uses."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from ctxplane.runtime.client import Pins
from tests.support.process import CtxplaneProcess, ctxplane, write_config

README = Path(__file__).resolve().parents[2] / "README.md"


def _blocks(after: str) -> tuple[str, str]:
    """The README's python block that follows ``after``, and the text block printed after it."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index(after):]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    printed = re.search(r"```text\n(.*?)```", section[code.end():], re.S)
    assert printed is not None
    return code.group(1), printed.group(1)


def test_the_readme_client_example_prints_what_the_readme_says(tmp_path: Path) -> None:
    demo = ctxplane("demo", "--flows", "50", "--root", str(tmp_path / "eb"))
    assert demo.returncode == 0, demo.stderr
    demo_pins = json.loads(demo.stdout.splitlines()[1].removeprefix("pins: "))
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'ctxplane.sqlite'}")
    assert ctxplane("run", "--config", str(config), "--once").returncode == 0
    runs = json.loads(ctxplane("runs", "--config", str(config), "--json").stdout)
    assert [run["pins"] for run in runs] == [demo_pins]
    code, printed = _blocks("### Python client")
    assert 'Client.from_config("runs/demo/ctxplane.yaml"' in code
    assert Pins.from_mapping(demo_pins).as_dict() == demo_pins
    script = code.replace("runs/demo/ctxplane.yaml", str(config))
    with CtxplaneProcess(config):
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == printed
