"""Shared, in-memory ingest progress: which partitions have caught up (for ``run --once``)."""

from __future__ import annotations

import anyio

__all__ = ("IngestProgress",)

PartitionKey = tuple[str, int]


class IngestProgress:
    """Partition actors report here when they are idle (nothing left to read, nothing in flight).

    ``run --once`` waits for every expected partition to be idle once; the report is per incarnation
    state, not durable state, so losing it on a restart only delays the exit.
    """

    def __init__(self, expected: set[PartitionKey]) -> None:
        self._expected = set(expected)
        self._idle: set[PartitionKey] = set()
        self._all_idle = anyio.Event()
        self.positions: dict[PartitionKey, str | None] = {}
        if not self._expected:
            self._all_idle.set()

    def register(self, key: PartitionKey) -> None:
        self._idle.discard(key)

    def idle(self, key: PartitionKey, position: str | None) -> None:
        self.positions[key] = position
        self._idle.add(key)
        if self._expected <= self._idle:
            self._all_idle.set()

    def committed(self, key: PartitionKey, next_offset: str) -> None:
        self.positions[key] = next_offset

    @property
    def expected_count(self) -> int:
        return len(self._expected)

    @property
    def idle_count(self) -> int:
        """Expected partitions that reported idle (drained) at least once since their last start."""
        return len(self._expected & self._idle)

    @property
    def all_idle(self) -> bool:
        """Every expected partition was idle at once at some moment (what ``run --once`` waits for)."""
        return self._all_idle.is_set()

    async def wait_all_idle(self) -> None:
        await self._all_idle.wait()
