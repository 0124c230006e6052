"""Progress and the closing summary of long work: ``ctxplane run --once`` and ``ctxplane replay``.

Counts come from one place: the outcome of every group commit (``ApplyOutcome``: the intake
counters the transaction added, and the ledger rows it wrote by reason), handed to
:meth:`WorkReporter.committed` by the store-writer (``run --once``) or by the replay loop. So the
summary is what the store took: on a fresh store its counts are the ``intake_counters`` and the
``apply_failures`` rows.

Where it goes (stderr only; stdout stays what each command printed before):
- stderr is a terminal: a live line (rich) with events/s, lag or remaining per plane and ETA, then a
  one-line human summary;
- otherwise: a structured ``progress`` log line when the work starts and every ``every_s`` seconds
  (JSON with ``logging.format: json``);
- always: a structured ``summary`` log line at the end (also when the work was interrupted, with
  ``completed: false``): applied, duplicates, rejected, ignored, rejected by reason, late
  annotations, seconds and events/s.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, TextIO

import anyio
import structlog

from ctxplane.actors.ingest.apply import ApplyOutcome
from ctxplane.contracts.reasons import Reason
from ctxplane.runtime.exceptions import CtxplaneError

__all__ = ("DEFAULT_EVERY_S", "LagSource", "WorkReporter", "human_summary")

log = structlog.get_logger("ctxplane.progress")

#: How often the structured progress line is written when stderr is not a terminal.
DEFAULT_EVERY_S = 10.0
# The live line on a terminal is refreshed this often (it costs a redraw, nothing is logged).
_LIVE_EVERY_S = 0.5

# Not summed: a commit touching a frame or flow in conflict records every event involved again (the
# store keeps one row per event), so their outcome counts exceed the rows; `ctxplane status` shows them.
_CONFLICTS = frozenset({Reason.FLOW_BINDING_CONFLICT.value, Reason.JOIN_FRAME_ROLE_CONFLICT.value})

#: Records not applied yet per plane (``None``: the bus cannot say, e.g. Kinesis sequence numbers).
LagSource = Callable[[], Awaitable[Mapping[str, int | None]]]


class WorkReporter:
    """Tallies group-commit outcomes and reports progress and the summary of one piece of work.

    Args:
        work: what is reported (``"run --once"``, ``"replay"``): the ``work`` field of every line.
        planes: topic -> plane, to count per plane.
        every_s: seconds between structured progress lines; 0 turns progress off (summary only).
        stream: where the terminal output goes (default ``sys.stderr``); ``tty`` overrides its isatty().
    """

    def __init__(self, work: str, planes: Mapping[str, str], *, every_s: float = DEFAULT_EVERY_S,
                 stream: TextIO | None = None, tty: bool | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.work = work
        self._planes = dict(planes)
        self._every_s = every_s
        self._stream = stream if stream is not None else sys.stderr
        self._tty = self._stream.isatty() if tty is None else tty
        self._clock = clock
        self.counts: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()  # ledger rows by reason
        self._done: Counter[str] = Counter()  # records committed per plane
        self._planned: dict[str, int] | None = None
        self._lag: dict[str, int | None] = {}
        self._started: float | None = None
        self._ended: float | None = None
        self._extra: dict[str, Any] = {}
        self._incomplete = False
        self._live: _Live | None = None
        self._drained: Callable[[], tuple[int, int]] | None = None
        self._begun: anyio.Event | None = None  # made in running(): an Event needs the event loop

    # -- what the work tells the reporter ---------------------------------------------------------

    def plan(self, records_by_plane: Mapping[str, int]) -> None:
        """The work is a known window (replay) of this many records per plane (remaining = plan -
        committed), and begins now."""
        self._planned = dict(records_by_plane)
        self.start()

    def committed(self, outcome: ApplyOutcome) -> None:
        """One group commit's outcome (called after the transaction committed)."""
        self.counts.update(outcome.counts)
        for (topic, _partition, _name), n in outcome.partition_counts.items():
            self._done[self._planes.get(topic, "?")] += n
        for (_plane, _topic, _partition, reason), n in outcome.failures.items():
            self.failures[reason] += n

    def incomplete(self) -> None:
        """The work stopped before its end (a signal): the summary says ``completed: false``."""
        self._incomplete = True

    def note(self, **fields: Any) -> None:
        """Fields added to the summary (e.g. the replay id)."""
        self._extra.update(fields)

    def start(self) -> None:
        """The work begins (the clock starts; progress lines follow). Before it, nothing is reported:
        a command refused while it checks its input says only why."""
        if self._started is None:
            self._started = self._clock()
            if self._begun is not None:
                self._begin_reporting()

    def _begin_reporting(self) -> None:
        """The first progress line (or the live line), written at once: however short the work is."""
        assert self._begun is not None
        self._sample_drained()
        if self._every_s > 0:
            if self._tty:
                self._live = _Live(self, self._stream)
            else:
                log.info("progress", **self.progress())
        self._begun.set()

    # -- figures ------------------------------------------------------------------------------------

    def elapsed_s(self) -> float:
        if self._started is None:
            return 0.0
        return (self._ended if self._ended is not None else self._clock()) - self._started

    @property
    def events(self) -> int:
        return sum(self.counts.values())

    @property
    def rejected(self) -> int:
        return self.counts.get("rejected", 0) + self.counts.get("payload_hash_mismatch", 0)

    def remaining(self) -> dict[str, int | None]:
        """Records left per plane: the plan minus what was committed (replay), or the lag, i.e. the
        records on the bus not committed yet (run --once)."""
        if self._planned is not None:
            return {plane: max(0, n - self._done.get(plane, 0)) for plane, n in sorted(self._planned.items())}
        return dict(sorted(self._lag.items()))

    def progress(self) -> dict[str, Any]:
        """The fields of one progress line."""
        elapsed = self.elapsed_s()
        rate = self.events / elapsed if elapsed > 0 else 0.0
        remaining = self.remaining()
        total_left = sum(v for v in remaining.values() if v is not None) if remaining and None not in remaining.values() else None
        return {
            "work": self.work, "events": self.events, "applied": self.counts.get("applied", 0),
            "duplicates": self.counts.get("duplicate", 0), "rejected": self.rejected,
            "events_per_s": round(rate), "elapsed_s": round(elapsed, 1),
            "remaining": remaining, "remaining_total": total_left,
            "eta_s": round(total_left / rate, 1) if total_left is not None and rate > 0 else None,
            **{k: v for k, v in self._extra.items() if k == "partitions_drained"},
        }

    def summary(self, *, completed: bool) -> dict[str, Any]:
        """The fields of the closing summary."""
        elapsed = self.elapsed_s()
        ledger = dict(sorted(self.failures.items()))
        return {
            "work": self.work, "completed": completed, "events": self.events,
            "applied": self.counts.get("applied", 0), "duplicates": self.counts.get("duplicate", 0),
            "rejected": self.rejected, "ignored": self.counts.get("ignored", 0),
            "rejected_by_reason": {r: n for r, n in ledger.items() if r not in _CONFLICTS and not Reason(r).is_annotation},
            "late": sum(n for r, n in ledger.items() if Reason(r).is_annotation),
            "seconds": round(elapsed, 3), "events_per_s": round(self.events / elapsed) if elapsed > 0 else None,
            **self._extra,
        }

    # -- reporting ------------------------------------------------------------------------------------

    @asynccontextmanager
    async def running(self, *, lag: LagSource | None = None,
                      drained: Callable[[], tuple[int, int]] | None = None) -> AsyncIterator[WorkReporter]:
        """Report progress while the body runs; write the summary when it ends (however it ends).

        ``lag`` is asked at each report (run: the checkpoint actor's lag per plane); ``drained``
        gives (partitions drained, partitions) for run --once.
        """
        self._begun = anyio.Event()
        self._drained = drained
        if self._started is not None:
            self._begin_reporting()
        completed = False
        try:
            async with anyio.create_task_group() as tg:
                if self._every_s > 0:
                    tg.start_soon(self._report, lag)
                try:
                    yield self
                    completed = not self._incomplete
                finally:
                    tg.cancel_scope.cancel()
        finally:
            if self._live is not None:
                self._live.stop()
                self._live = None
            if self._started is not None:  # else refused before it began: the error says it all
                self._ended = self._clock()
                self._sample_drained()
                summary = self.summary(completed=completed)
                log.info("summary", **summary)
                if self._tty:
                    self._stream.write(human_summary(summary) + "\n")
                    self._stream.flush()

    async def _report(self, lag: LagSource | None) -> None:
        assert self._begun is not None
        await self._begun.wait()
        while True:
            await anyio.sleep(_LIVE_EVERY_S if self._live is not None else self._every_s)
            if lag is not None:
                try:
                    self._lag = dict(await lag())
                except CtxplaneError as exc:  # the checkpoint actor busy or restarting: a progress figure never ends the work
                    log.debug("lag unavailable for progress", error=str(exc))
            self._sample_drained()
            if self._live is not None:
                self._live.update()
            else:
                log.info("progress", **self.progress())

    def _sample_drained(self) -> None:
        if self._drained is not None:
            done, total = self._drained()
            self._extra["partitions_drained"] = f"{done}/{total}"


class _Live:
    """The live line on a terminal (rich). Log lines written meanwhile are printed above it."""

    def __init__(self, reporter: WorkReporter, stream: TextIO) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn

        self._reporter = reporter
        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"), console=Console(file=stream), refresh_per_second=4,
            redirect_stdout=False, redirect_stderr=True,
        )
        self._task = self._progress.add_task(reporter.work, total=None, detail="starting")
        self._progress.start()

    def update(self) -> None:
        fields = self._reporter.progress()
        left = fields["remaining_total"]
        total = fields["events"] + left if left is not None else None
        self._progress.update(self._task, completed=fields["events"], total=total, detail=_detail(fields))

    def stop(self) -> None:
        self.update()
        self._progress.stop()


def _detail(fields: Mapping[str, Any]) -> str:
    parts = [f"{fields['events_per_s']:,} events/s"]
    per_plane = fields["remaining"]
    if per_plane:
        parts.append("left " + " ".join(f"{plane} {'?' if n is None else f'{n:,}'}" for plane, n in per_plane.items()))
    if fields["eta_s"] is not None:
        parts.append(f"ETA {_duration(fields['eta_s'])}")
    parts.append(f"dup {fields['duplicates']:,} rejected {fields['rejected']:,}")
    if "partitions_drained" in fields:
        parts.append(f"drained {fields['partitions_drained']}")
    return " · ".join(parts)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}:{secs:02d}"


def human_summary(summary: Mapping[str, Any]) -> str:
    """The summary as one line for a person (the structured ``summary`` log line has the same figures)."""
    rate = f", {summary['events_per_s']:,} events/s" if summary.get("events_per_s") is not None else ""
    reasons = summary["rejected_by_reason"]
    rejected = f"rejected {summary['rejected']:,}" + (
        f" ({', '.join(f'{r} {n:,}' for r, n in reasons.items())})" if reasons else "")
    parts = [f"applied {summary['applied']:,}", f"duplicates {summary['duplicates']:,}", rejected]
    if summary["ignored"]:
        parts.append(f"ignored {summary['ignored']:,}")
    if summary["late"]:
        parts.append(f"late {summary['late']:,}")
    state = "" if summary["completed"] else " (interrupted)"
    return (f"{summary['work']}{state}: {summary['events']:,} events in {summary['seconds']:.1f} s{rate}: "
            + "; ".join(parts))
