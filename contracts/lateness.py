"""The lateness fold: a partition's verdicts, in bus order, over its watermark and allowed lateness.

The watermark of a partition is the latest event time it has accepted. An accepted event older
than the watermark (as it stood before that event) minus the allowed lateness is still applied, but
marked late, so that the store-writer ledgers a ``LATE_CONTEXT_EVENT`` / ``LATE_TRAFFIC_EVENT``
annotation for it (docs/configuration.md, ``*.allowed_lateness_s``). The watermark never moves back.

Pure and synchronous: the partition actor folds each batch it reads (actors/ingest/partition.py),
and a replay folds its windows the same way, so both mark the same events late.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from ctxplane.contracts.intake import Accepted, Verdict

__all__ = ("fold_lateness", "mark_late")


def fold_lateness(
    verdicts: Sequence[Verdict], watermark_us: int | None, allowed_lateness_us: int
) -> tuple[tuple[Verdict, ...], int | None]:
    """The verdicts with the late ones marked, and the watermark after them.

    An :class:`Accepted` verdict is late when its ``ts_us`` is strictly below the running watermark
    minus ``allowed_lateness_us`` (exactly at the bound is on time); the running watermark is then
    the greater of itself and ``ts_us``. ``None`` is a partition that has accepted nothing yet: its
    first event is on time and sets it. Rejected and ignored verdicts pass through untouched.

    This runs per event on the ingest hot path, so it allocates nothing per on-time event: a batch
    without a late event (the common case) costs one scan and the tuple; one with a late event is
    folded again from its start into a new list, with a copy of each late verdict.
    """
    watermark = watermark_us
    for verdict in verdicts:
        if type(verdict) is Accepted:
            ts = verdict.ts_us
            if watermark is not None and ts < watermark - allowed_lateness_us:
                return _fold_marking(verdicts, watermark_us, allowed_lateness_us)
            if watermark is None or ts > watermark:
                watermark = ts
    return tuple(verdicts), watermark


def _fold_marking(
    verdicts: Sequence[Verdict], watermark_us: int | None, allowed_lateness_us: int
) -> tuple[tuple[Verdict, ...], int | None]:
    """:func:`fold_lateness` for a batch with a late event: the same fold, copying the late ones."""
    watermark = watermark_us
    out: list[Verdict] = []
    append = out.append
    for verdict in verdicts:
        if type(verdict) is Accepted:
            ts = verdict.ts_us
            if watermark is not None and ts < watermark - allowed_lateness_us:
                verdict = mark_late(verdict, watermark)
            if watermark is None or ts > watermark:
                watermark = ts
        append(verdict)
    return tuple(out), watermark


def mark_late(verdict: Accepted, watermark_us: int) -> Accepted:
    """``verdict`` marked late against ``watermark_us`` (which the ledger annotation reports)."""
    return replace(verdict, late=True, watermark_us=watermark_us)
