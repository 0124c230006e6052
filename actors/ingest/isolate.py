"""Isolating a record the store refuses, so that one value cannot fail its group commit forever.

A group commit is one transaction over many records. When the database refuses a value
(:class:`~runtime.exceptions.StoreDataError`: a number beyond its column, text it cannot hold, a
constraint), retrying the same group fails the same way on every attempt and after every restart —
a poison pill. Intake refuses such values first (``contracts/limits.py``); this is the defence in
depth for whatever it misses. The culprit is found, its effects replaced by a ledger row
(``STORE_REJECTED``), and the group committed without it; the checkpoint moves past it as past any
rejected record. Outages (:class:`~runtime.exceptions.StoreUnavailable`) are not handled here: the
caller retries those with backoff, losing nothing.

Finding the culprit: *probes* run the same program over the group cut to its first ``k`` verdicts
(in group order; every batch keeps its checkpoint advance), each in a transaction that is always
rolled back. The empty cut must pass — otherwise the failure is not about a record, and the error is
re-raised as before. The whole group fails. A binary search finds the ``k`` where the cut starts to
fail; verdict ``k`` is the culprit. That is about log2(n) + 1 probes per culprit, paid only when a
commit failed this way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import structlog

from ctxplane.contracts.intake import Accepted, Rejected, Verdict
from ctxplane.contracts.messages import ApplyBatch
from ctxplane.contracts.reasons import Reason
from ctxplane.runtime.exceptions import StoreDataError
from ctxplane.runtime.store import Program, StoreBackend

__all__ = ("cut", "store_rejected", "write_isolating")

T = TypeVar("T")

log = structlog.get_logger("ctxplane.store_writer")

# The ledger row keeps the database's message, cut to this: enough to see which value was refused.
_ERROR_CHARS = 500


class _ProbePassed(Exception):
    """Raised at the end of a probe's program: the backend rolls the transaction back."""


def _rolled_back(program: Program[Any]) -> Program[None]:
    yield from program
    raise _ProbePassed


def cut(batches: Sequence[ApplyBatch], keep: int) -> list[ApplyBatch]:
    """The group with only its first ``keep`` verdicts (in group order); every batch stays, so
    every checkpoint advance is still written."""
    out = []
    for batch in batches:
        verdicts = batch.verdicts[: max(keep, 0)]
        keep -= len(batch.verdicts)
        out.append(batch if len(verdicts) == len(batch.verdicts) else dataclasses.replace(batch, verdicts=verdicts))
    return out


def store_rejected(verdict: Accepted | Rejected, error: str) -> Rejected:
    """The ledger-only stand-in for a verdict whose writes the store refused.

    Its text is what a ledger row holds on both backends (ids with U+0000 are left out), so the
    stand-in itself cannot be refused for the same reason.
    """
    details: dict[str, Any] = {"error": error[:_ERROR_CHARS]}
    if type(verdict) is Rejected:
        details["intake_reason"] = verdict.reason.value

    def text(value: str | None) -> str | None:
        return value if value is not None and "\x00" not in value else None

    return Rejected(verdict.source, Reason.STORE_REJECTED, details, text(verdict.event_id), text(verdict.event_type),
                    text(verdict.platform_run_id), text(verdict.scenario_run_id))


def _replace(batches: Sequence[ApplyBatch], index: int, verdict: Verdict) -> list[ApplyBatch]:
    out = []
    for batch in batches:
        if 0 <= index < len(batch.verdicts):
            verdicts = (*batch.verdicts[:index], verdict, *batch.verdicts[index + 1 :])
            batch = dataclasses.replace(batch, verdicts=verdicts)
        index -= len(batch.verdicts)
        out.append(batch)
    return out


async def write_isolating(
    store: StoreBackend, build: Callable[[Sequence[ApplyBatch]], Program[T]], batches: Sequence[ApplyBatch]
) -> tuple[T, list[ApplyBatch]]:
    """Commit ``build(batches)``; when the store refuses a record, ledger it instead and retry.

    Returns:
        the program's result and the batches as committed (isolated verdicts replaced by their
        ``STORE_REJECTED`` stand-ins).

    Raises:
        StoreDataError: the failure is not about one record (the group without any verdict fails
            too), or a stand-in was refused again.
        StoreUnavailable, LeaseLost, ...: as ``store.write`` raises them, from the commit or from a
            probe; the caller retries or refuses as for any commit (isolation starts again then).
    """
    group = list(batches)
    while True:
        try:
            return await store.write(build(group)), group
        except StoreDataError as exc:
            index, error = await _culprit(store, build, group, exc)
        verdict = [v for b in group for v in b.verdicts][index]
        if not isinstance(verdict, Accepted | Rejected) or (type(verdict) is Rejected and verdict.reason is Reason.STORE_REJECTED):
            raise StoreDataError(f"the store refused a ledger-only record too: {error}")
        log.error("the store refused a record; ledgered as STORE_REJECTED, committing the rest",
                  topic=verdict.source.topic, partition=verdict.source.partition, offset=verdict.source.offset,
                  event_id=verdict.event_id, error=error)
        group = _replace(group, index, store_rejected(verdict, error))


async def _culprit(
    store: StoreBackend, build: Callable[[Sequence[ApplyBatch]], Program[T]], group: list[ApplyBatch],
    failure: StoreDataError,
) -> tuple[int, str]:
    """The index (in group order) of the first verdict whose addition makes the group fail, and the
    store's message for it."""
    if await _probe(store, build, cut(group, 0)) is not None:
        raise failure  # not about a record: the checkpoints or the ledger alone fail
    passes, fails = 0, sum(len(b.verdicts) for b in group)  # invariant: cut(passes) passes, cut(fails) fails
    error = str(failure)
    while fails - passes > 1:
        middle = (passes + fails) // 2
        refused = await _probe(store, build, cut(group, middle))
        if refused is None:
            passes = middle
        else:
            fails, error = middle, refused
    return passes, error


async def _probe(store: StoreBackend, build: Callable[[Sequence[ApplyBatch]], Program[T]], group: list[ApplyBatch]) -> str | None:
    """Run ``build(group)`` and roll it back: ``None`` if it passed, else the store's message."""
    try:
        await store.write(_rolled_back(build(group)))
    except _ProbePassed:
        return None
    except StoreDataError as exc:
        return str(exc)
    raise AssertionError("a probe program always raises")  # pragma: no cover
