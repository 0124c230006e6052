"""The answer vocabulary: members travel as plain JSON strings and every one is documented."""

from __future__ import annotations

import json
from pathlib import Path

import orjson

from ctxplane.contracts.answers import ERROR_STATUSES, JOIN_MISSES, ErrorCode, Status

PROTOCOL = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text(encoding="utf-8")


def test_members_are_encoded_as_their_plain_strings() -> None:
    answer = {"status": Status.MISSING_BINDING, "code": ErrorCode.MISSING_PINS}
    assert orjson.dumps(answer) == b'{"status":"MISSING_BINDING","code":"MISSING_PINS"}'
    assert json.dumps(answer) == '{"status": "MISSING_BINDING", "code": "MISSING_PINS"}'


def test_a_decoded_answer_compares_equal_to_the_members() -> None:
    decoded = orjson.loads(orjson.dumps({"status": Status.UNAVAILABLE}))
    assert type(decoded["status"]) is str
    assert decoded["status"] == Status.UNAVAILABLE and decoded["status"] in ERROR_STATUSES
    assert "MISSING_JOIN_FRAME" in JOIN_MISSES


def test_misses_and_conflicts_are_answers_not_errors() -> None:
    assert not (JOIN_MISSES | {Status.READY, Status.CONFLICT, Status.OK}) & ERROR_STATUSES


def test_every_status_and_code_is_documented() -> None:
    for member in (*Status, *ErrorCode):
        assert f"`{member.value}`" in PROTOCOL or f'"{member.value}"' in PROTOCOL, member
