"""What the Kinesis adapter knows of each shard's end without asking: the newest sequence number it
saw, and how far behind the tip the last GetRecords answer was.

End position (docs/operations.md §How reading works): Kinesis has no cheap "last sequence number"
call, and polling one would spend the shard's read budget. The adapter's ``end_position``
therefore reports the newest sequence number this adapter has seen on the shard (read or
published), ``EndingSequenceNumber`` for a drained closed shard, or ``"0"`` when it knows nothing;
its ``lag`` is ``None`` (sequence numbers are not counts). ``MillisBehindLatest`` is what Kinesis
does say: it is kept per shard, and forgotten when no GetRecords renewed it for ``_BEHIND_TTL_S``.
"""

from __future__ import annotations

import time
from typing import Final

__all__ = ("ShardKey", "ShardProgress")

# A MillisBehindLatest older than this (no GetRecords on the shard since) is no longer reported.
_BEHIND_TTL_S: Final = 60.0

ShardKey = tuple[str, int]  # (stream, partition)


class ShardProgress:
    """Per shard: the newest sequence number seen, and the last ``MillisBehindLatest`` with its time."""

    def __init__(self) -> None:
        self._last_seen: dict[ShardKey, int] = {}
        self._behind: dict[ShardKey, tuple[int, float]] = {}  # MillisBehindLatest, monotonic time

    def seen(self, key: ShardKey, sequence: int) -> None:
        """A record with this sequence number was read or published."""
        if sequence > self._last_seen.get(key, -1):
            self._last_seen[key] = sequence

    def last_seen(self, key: ShardKey) -> int:
        """The newest sequence number seen on the shard, or 0."""
        return self._last_seen.get(key, 0)

    def behind(self, key: ShardKey, millis: int) -> None:
        """A GetRecords answer said ``MillisBehindLatest = millis``."""
        self._behind[key] = (millis, time.monotonic())

    def behind_ms(self, key: ShardKey) -> int | None:
        """The shard's last ``MillisBehindLatest``, or ``None`` when there was none in the last
        ``_BEHIND_TTL_S`` seconds."""
        value = self._behind.get(key)
        if value is None or time.monotonic() - value[1] > _BEHIND_TTL_S:
            return None
        return value[0]
