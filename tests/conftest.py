"""Shared fixtures: fresh stores per backend, config files, real `ctxplane run` processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.stores import BACKENDS, fresh_dsn


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
async def store_dsn(backend: str, tmp_path: Path) -> str:
    """An empty store of each backend (PostgreSQL tests skip when no server was started)."""
    return await fresh_dsn(backend, tmp_path)


@pytest.fixture
async def sqlite_dsn(tmp_path: Path) -> str:
    return await fresh_dsn("sqlite", tmp_path)
