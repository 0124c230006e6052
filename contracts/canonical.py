"""Canonical JSON and the SHA-256 digests built on it — defined once, used everywhere.

Canonical JSON = orjson output with keys sorted at every level, no whitespace, UTF-8. orjson is
deterministic for a given value (shortest round-trip float repr), so equal values give equal bytes.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

__all__ = ("canonical_json", "digest", "sha256_hex")

_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS


def canonical_json(value: Any) -> bytes:
    """Serialise ``value`` canonically (sorted keys, compact, UTF-8)."""
    return orjson.dumps(value, option=_OPTIONS)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def digest(value: Any) -> str:
    """SHA-256 hex of the canonical JSON of ``value``."""
    return hashlib.sha256(orjson.dumps(value, option=_OPTIONS)).hexdigest()
