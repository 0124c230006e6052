"""The one restart and retry policy: how long to wait after a failure, how many are too many.

- :class:`Backoff` is the delay schedule: exponential, capped, jittered. Pure: the randomness
  comes from the ``random.Random`` it is given.
- :class:`Retry` counts the successive failures of one thing (a supervised child, a store write, a
  Kinesis call) and gives the pause before its next attempt from a :class:`Backoff`; with
  ``attempts`` it also says when there is none left. The caller sleeps (``anyio.sleep``) and
  decides what a failure is: the policy is here, the loop stays readable where it runs.
- :class:`Intensity` / :class:`RestartWindow`: more than ``max_restarts`` restarts within
  ``period`` seconds means give up (OTP's restart intensity), for supervisors and for the query
  actor's worker processes alike.

AWS calls are retried by this policy too, not by botocore's (``runtime/bus/kinesis/client.py`` turns
botocore's retries off), so no retry loop ever runs inside another.
"""

from __future__ import annotations

import dataclasses
import random
from collections import deque

__all__ = ("Backoff", "Intensity", "RestartWindow", "Retry")


@dataclasses.dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with jitter between a failure and the next attempt.

    The defaults start fast (50 ms: most crashes are one bad message) and cap at 5 s, so a DB
    outage produces a slow, steady retry rather than a restart storm. ``jitter`` spreads the
    retries of many actors that failed together; ``full_jitter`` draws the whole delay uniformly
    below the exponential cap instead (AWS's advice for throttled calls: ``jitter`` is unused then).
    A child that stayed up for ``reset_after`` seconds starts again from ``initial``.
    """

    initial: float = 0.05
    maximum: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.2
    reset_after: float = 10.0
    full_jitter: bool = False

    def __post_init__(self) -> None:
        if not (0 <= self.initial <= self.maximum and self.multiplier >= 1):
            raise ValueError(
                "Backoff needs 0 <= initial <= maximum and multiplier >= 1, got "
                f"initial={self.initial!r} maximum={self.maximum!r} multiplier={self.multiplier!r}"
            )
        if not (0 <= self.jitter < 1 and self.reset_after >= 0):
            raise ValueError(
                f"Backoff needs 0 <= jitter < 1 and reset_after >= 0, got jitter={self.jitter!r} "
                f"reset_after={self.reset_after!r}"
            )

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait before retry number ``attempt`` (0 = first since the last reset).

        ``initial * multiplier**attempt``, never above ``maximum``, scaled by a uniform factor in
        ``[1 - jitter, 1 + jitter]`` (still capped at ``maximum``), or with ``full_jitter`` drawn
        uniformly from ``[0, that]``. Pure: the only randomness comes from ``rng``.

        Raises:
            ValueError: ``attempt`` is negative.
        """
        if attempt < 0:
            raise ValueError(f"attempt must be >= 0, got {attempt}")
        try:
            base = min(self.initial * self.multiplier**attempt, self.maximum)
        except OverflowError:  # multiplier**attempt beyond float range: huge unless initial is 0
            base = self.maximum if self.initial > 0 else 0.0
        if self.full_jitter:
            return rng.uniform(0, base)
        return min(base * (1 + rng.uniform(-self.jitter, self.jitter)), self.maximum)


class Retry:
    """The successive failures of one thing under a :class:`Backoff`.

    Usage, where the caller decides what a failure is::

        retry = Retry(backoff, attempts=8)
        while True:
            try:
                return await call()
            except Transient:
                pause = retry.failed()
                if retry.exhausted:
                    raise
                await anyio.sleep(pause)

    Invariant: ``failures`` is the number of failures since the last reset; the pause after a
    failure is ``backoff.delay(failures before it)``.
    """

    __slots__ = ("attempts", "backoff", "failures", "_rng")

    def __init__(self, backoff: Backoff, *, attempts: int | None = None, rng: random.Random | None = None) -> None:
        if attempts is not None and attempts < 1:
            raise ValueError(f"attempts must be >= 1 or None (unbounded), got {attempts}")
        self.backoff = backoff
        self.attempts = attempts
        self.failures = 0
        self._rng = rng if rng is not None else random.Random()

    def failed(self, *, up_for: float | None = None) -> float:
        """Count one failure; returns the seconds to wait before the next attempt.

        ``up_for``: how long the failed thing had been running. At least ``backoff.reset_after``
        means it was healthy until now, and the schedule starts again from ``backoff.initial``.
        """
        if up_for is not None and up_for >= self.backoff.reset_after:
            self.failures = 0
        pause = self.backoff.delay(self.failures, self._rng)
        self.failures += 1
        return pause

    @property
    def exhausted(self) -> bool:
        """Whether the failures used up ``attempts`` (never, when unbounded)."""
        return self.attempts is not None and self.failures >= self.attempts


@dataclasses.dataclass(frozen=True, slots=True)
class Intensity:
    """More than ``max_restarts`` restarts within ``period`` seconds means escalate (OTP)."""

    max_restarts: int = 3
    period: float = 5.0

    def __post_init__(self) -> None:
        if self.max_restarts < 0 or not self.period > 0:
            raise ValueError(
                f"Intensity needs max_restarts >= 0 and period > 0, got {self.max_restarts!r}, "
                f"{self.period!r}"
            )


class RestartWindow:
    """The restarts of the last ``intensity.period`` seconds, to check against the intensity."""

    __slots__ = ("intensity", "_times")

    def __init__(self, intensity: Intensity) -> None:
        self.intensity = intensity
        self._times: deque[float] = deque()

    def charge(self, now: float) -> bool:
        """Record a restart at ``now`` (a monotonic clock); True when that exceeds the intensity."""
        times = self._times
        times.append(now)
        while now - times[0] > self.intensity.period:
            times.popleft()
        return len(times) > self.intensity.max_restarts

    def __len__(self) -> int:
        """The restarts within the window (as of the last :meth:`charge`)."""
        return len(self._times)
