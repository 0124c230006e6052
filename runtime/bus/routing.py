"""Partition routing: which partition a record goes to, decided from its partition key alone.

The hash must be identical in every process, on every machine and in every Python version, because
producers and replays must agree on where a key lives. Python's ``hash()`` is salted per
process (PYTHONHASHSEED), so it is never used: the route is the first 8 bytes of the key's SHA-256,
read as a big-endian unsigned integer, modulo the partition count.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from ctxplane.runtime.exceptions import BusError

__all__ = ("partition_for", "partition_key_for")

# The payload fields tried, in order, when no key field is named (docs/events.md §Publishing and routing).
_DEFAULT_KEY_FIELDS = ("merchant_id", "flow_id")


def partition_for(partition_key: str, partitions: int) -> int:
    """Return the partition (``0 <= p < partitions``) that ``partition_key`` routes to.

    Stable across processes and releases: ``int.from_bytes(sha256(key_utf8)[:8], "big") % n``.
    Lone surrogates (possible in keys decoded from JSON escapes) are encoded with
    ``surrogatepass`` so that every ``str`` has a route.

    Raises:
        ValueError: ``partitions < 1``.
    """
    if partitions < 1:
        raise ValueError(f"partitions must be >= 1, got {partitions}")
    digest = hashlib.sha256(partition_key.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") % partitions


def _key_text(value: object) -> str | None:
    """A usable key from a field value: non-empty strings as they are, integers in decimal.

    Booleans, floats, null and containers are not keys (their text forms are ambiguous: ``1`` vs
    ``1.0`` vs ``true``), so the caller falls through to the next candidate field.
    """
    if isinstance(value, str):
        return value or None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def partition_key_for(envelope: Mapping[str, Any], key_field: str | None = None) -> str:
    """Return the partition key of ``envelope``.

    Candidates, first usable wins: payload field ``key_field`` (when given), payload
    ``merchant_id``, payload ``flow_id``, then the envelope's ``event_id``. A usable value is a
    non-empty string or an integer (stringified). A named ``key_field`` that is absent falls back to
    the default chain rather than failing, so one command can publish mixed event types.

    Raises:
        BusError: no candidate is usable (no payload key and no ``event_id``).
    """
    payload = envelope.get("payload")
    if isinstance(payload, Mapping):
        fields = _DEFAULT_KEY_FIELDS if key_field is None else (key_field, *_DEFAULT_KEY_FIELDS)
        for name in fields:
            key = _key_text(payload.get(name))
            if key is not None:
                return key
    key = _key_text(envelope.get("event_id"))
    if key is None:
        named = f"payload.{key_field}, " if key_field else ""
        raise BusError(
            f"no partition key: the envelope has none of {named}payload.merchant_id, "
            "payload.flow_id, event_id"
        )
    return key
