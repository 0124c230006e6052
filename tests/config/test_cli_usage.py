"""The CLI's first impression: usage without arguments, --version, one clear line for a usage error."""

from __future__ import annotations

from tests.support.process import ctxplane


def test_the_cli_prints_usage_without_arguments_and_its_version() -> None:
    bare = ctxplane()
    assert bare.returncode == 2 and bare.stderr.startswith("usage: ctxplane") and "run" in bare.stderr
    version = ctxplane("--version")
    assert version.returncode == 0 and version.stdout.startswith("ctxplane ")
    missing = ctxplane("run")
    assert missing.returncode == 2
    assert missing.stderr.strip() == "ctxplane: the following arguments are required: --config (see `ctxplane run --help`)"
