"""Secrets in a DSN never reach output, and an exposed query socket is refused at config load."""

from __future__ import annotations

import string
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ctxplane.config.settings import load_settings, redact_dsn
from ctxplane.contracts.exceptions import ConfigError
from tests.support.process import ctxplane, write_config

# Passwords as operators type them: reserved URL characters unencoded, sometimes several.
_passwords = st.text(alphabet=string.ascii_letters + string.digits + "@#/?:%&=!$", min_size=6, max_size=24).map(
    lambda s: "Pw" + s  # a marker that cannot collide with the scheme, user or host below
)


@given(password=_passwords, user=st.sampled_from(["u", "ctxp", "svc_reader"]))
@settings(max_examples=300, deadline=None)
def test_a_password_never_survives_redaction_nor_a_config_error(password: str, user: str) -> None:
    dsn = f"postgresql://{user}:{password}@127.0.0.1:5432/d"
    assert password not in redact_dsn(dsn)
    assert password not in redact_dsn(f"postgresql://{user}@127.0.0.1/d?password={password}")
    try:
        load_settings(None, env={"CTXPLANE__STORE__DSN": dsn})
    except ConfigError as exc:
        assert password not in str(exc)
        assert "store.dsn" in str(exc)


@pytest.mark.parametrize("password", ["a#LeakFrag", "hunter2@LeakMe:99", "p/a?ss"])
def test_a_malformed_dsn_exits_2_naming_store_dsn_without_echoing_it(tmp_path: Path, password: str) -> None:
    config = write_config(tmp_path, f"postgresql://ctxp:{password}@127.0.0.1:5432/d")
    for command in (["digest", "--config", str(config)], ["migrate", "--config", str(config)]):
        result = ctxplane(*command)
        assert result.returncode == 2, result.stderr
        assert "store.dsn" in result.stderr
        assert password not in result.stdout + result.stderr
        for fragment in password.replace("@", " ").replace("#", " ").replace("?", " ").replace("/", " ").split():
            if len(fragment) > 3:
                assert fragment not in result.stdout + result.stderr


def test_a_non_loopback_tcp_listen_without_a_token_exits_2_before_starting(tmp_path: Path) -> None:
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 's.sqlite'}", query={"listen": "tcp://0.0.0.0:0"})
    result = ctxplane("run", "--config", str(config), "--once", timeout=30)
    assert result.returncode == 2, result.stderr
    assert "query.auth_token" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "s.sqlite").exists()  # refused before anything started


def test_loopback_tcp_and_a_token_are_both_accepted() -> None:
    assert load_settings(None, env={"CTXPLANE__QUERY__LISTEN": "tcp://127.0.0.1:7461"}).query.auth_token is None
    exposed = load_settings(None, env={"CTXPLANE__QUERY__LISTEN": "tcp://0.0.0.0:7461", "CTXPLANE__QUERY__AUTH_TOKEN": "t0k"})
    assert exposed.query.listen == "tcp://0.0.0.0:7461"


def test_the_dsn_and_the_token_are_secrets_in_every_dump_but_the_worker_handoff() -> None:
    from ctxplane.config.settings import REVEAL_SECRETS, secret_value

    settings = load_settings(None, env={"CTXPLANE__STORE__DSN": "postgresql://u:Pw-Dsn-Secret@127.0.0.1:5432/d",
                                        "CTXPLANE__QUERY__AUTH_TOKEN": "tok-Secret-1"})
    for shown in (repr(settings), str(settings), settings.model_dump_json(), repr(settings.model_dump())):
        assert "Pw-Dsn-Secret" not in shown and "tok-Secret-1" not in shown
    dumped = settings.model_dump(mode="json")
    assert dumped["store"]["dsn"] == "postgresql://u:***@127.0.0.1:5432/d" == settings.store.redacted_dsn
    assert dumped["query"]["auth_token"] == "***"
    # Unwrapped where used; the settings a process hands its own query workers carry them whole.
    assert secret_value(settings.query.auth_token) == "tok-Secret-1"
    handed = settings.model_dump(mode="json", context=REVEAL_SECRETS)
    assert handed["store"]["dsn"] == "postgresql://u:Pw-Dsn-Secret@127.0.0.1:5432/d"
    assert type(settings).model_validate({k: v for k, v in handed.items()}) == settings
