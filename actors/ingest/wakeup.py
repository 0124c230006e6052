"""How an idle partition actor waits: a back-off poll, woken at once by the bus's change feed.

An idle actor used to look at its partition every ``poll_interval_ms``, whatever happened: with 12
file-bus partitions that is 240 reads (and worker-thread hops) a second, ~7 % of a core for nothing
(docs/performance.md §Idle). Now:

- :class:`IdleBackoff`: each empty read doubles the wait, from ``poll_interval_ms`` up to
  ``idle_poll_max_ms``; a read that finds records resets it. On its own (Kinesis, or a file bus
  without inotify) that bounds the extra latency of the first record after a quiet spell by the ceiling.
- ``BusWatcher`` (``actors/ingest/bus_watch.py``): one actor per process reads the bus's change feed (inotify on the file bus,
  ``runtime/bus/changes.py``) and tells :data:`WAKE` to the partition actors whose files changed,
  so on the file bus a new record is read at once and the poll is only a safety net.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ("WAKE", "IdleBackoff", "Wake")


@dataclass(frozen=True, slots=True)
class Wake:
    """Bus watcher -> partition actor: your partition may have new records; read now."""


WAKE = Wake()


class IdleBackoff:
    """The wait before an idle partition actor looks again: doubles per empty read, up to a ceiling.

    ``ceiling_s`` below ``initial_s`` is raised to it (no back-off at all).
    """

    __slots__ = ("_ceiling", "_initial", "_next")

    def __init__(self, initial_s: float, ceiling_s: float) -> None:
        if not initial_s > 0:
            raise ValueError(f"initial_s must be > 0, got {initial_s!r}")
        self._initial = initial_s
        self._ceiling = max(ceiling_s, initial_s)
        self._next = initial_s

    def idle(self) -> float:
        """The wait after an empty read (and the next one is longer, up to the ceiling)."""
        delay = self._next
        self._next = min(self._next * 2, self._ceiling)
        return delay

    def reset(self) -> None:
        """Records were found: the next empty read waits the initial interval again."""
        self._next = self._initial
