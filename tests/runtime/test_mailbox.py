"""runtime/kernel/mailbox.py: bounded FIFO, backpressure, the two ways of closing, statistics."""

from __future__ import annotations

import math
from collections import deque

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ctxplane.runtime.exceptions import BrokenMailbox, ClosedMailbox, MailboxFull
from ctxplane.runtime.kernel import Mailbox, MailboxStatistics, open_mailbox

GUARD = 5.0


@pytest.mark.parametrize("capacity", [0, -1])
def test_capacity_below_one_is_refused(capacity: int) -> None:
    with pytest.raises(ValueError, match=r"mailbox 'm': capacity must be >= 1"):
        open_mailbox(capacity, "m")


@pytest.mark.parametrize("capacity", [math.inf, 1.5, True, None, "3"])
def test_capacity_must_be_an_int(capacity: object) -> None:
    with pytest.raises(TypeError, match="capacity must be an int"):
        open_mailbox(capacity, "m")  # type: ignore[arg-type]


def test_direct_construction_is_refused() -> None:
    with pytest.raises(TypeError, match="no public constructor"):
        Mailbox("m", 1, None, None)  # type: ignore[arg-type]


@settings(max_examples=60, deadline=None)
@given(items=st.lists(st.integers(), max_size=60), capacity=st.integers(1, 8))
def test_fifo_order_with_a_concurrent_producer(items: list[int], capacity: int) -> None:
    """Whatever the capacity, a consumer receives exactly what the producer put, in order."""

    async def scenario() -> list[object]:
        mailbox = open_mailbox(capacity, "fifo")
        received: list[object] = []

        async def produce() -> None:
            for item in items:
                await mailbox.put(item)

        with anyio.fail_after(GUARD):
            async with anyio.create_task_group() as tg:
                tg.start_soon(produce)
                for _ in items:
                    received.append(await mailbox.get())
        mailbox.close()
        return received

    assert anyio.run(scenario) == items


@settings(max_examples=100, deadline=None)
@given(
    capacity=st.integers(1, 5),
    ops=st.lists(st.one_of(st.integers(0, 1000), st.none()), max_size=50),
)
def test_nowait_operations_match_a_bounded_deque(capacity: int, ops: list[int | None]) -> None:
    """int = put_nowait(int), None = get_nowait(); checked against a model after every step."""

    async def scenario() -> None:
        mailbox = open_mailbox(capacity, "model")
        model: deque[int] = deque()
        for op in ops:
            if op is None:
                if model:
                    assert mailbox.get_nowait() == model.popleft()
                else:
                    with pytest.raises(anyio.WouldBlock):
                        mailbox.get_nowait()
            elif len(model) < capacity:
                mailbox.put_nowait(op)
                model.append(op)
            else:
                with pytest.raises(MailboxFull, match=rf"'model' is full \({capacity} messages\)"):
                    mailbox.put_nowait(op)
                assert mailbox.try_put(op) is False
            assert mailbox.statistics() == MailboxStatistics("model", len(model), capacity, 0, 0)
        mailbox.close()

    anyio.run(scenario)


async def test_producer_blocks_when_full_and_resumes_when_drained() -> None:
    mailbox = open_mailbox(2, "bp")
    sent: list[int] = []

    async def produce() -> None:
        for i in range(5):
            await mailbox.put(i)
            sent.append(i)

    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as tg:
            tg.start_soon(produce)
            await anyio.wait_all_tasks_blocked()
            # Two fit; the third put is parked: that wait is the backpressure.
            assert sent == [0, 1]
            assert mailbox.statistics() == MailboxStatistics("bp", 2, 2, 1, 0)

            assert await mailbox.get() == 0
            await anyio.wait_all_tasks_blocked()
            assert sent == [0, 1, 2]  # one slot freed, exactly one more put went through
            assert mailbox.statistics().waiting_senders == 1

            assert [await mailbox.get() for _ in range(4)] == [1, 2, 3, 4]
    assert sent == [0, 1, 2, 3, 4]
    assert mailbox.statistics() == MailboxStatistics("bp", 0, 2, 0, 0)


async def test_statistics_count_waiting_receivers() -> None:
    mailbox = open_mailbox(1, "rx")
    got: list[object] = []
    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: _append(got, mailbox))
            await anyio.wait_all_tasks_blocked()
            assert mailbox.statistics().waiting_receivers == 1
            await mailbox.put("x")
    assert got == ["x"]


async def _append(into: list[object], mailbox: Mailbox) -> None:
    into.append(await mailbox.get())


async def test_close_by_owner_raises_closed_everywhere_and_wakes_waiters() -> None:
    full = open_mailbox(1, "full")
    full.put_nowait("a")
    empty = open_mailbox(1, "empty")
    errors: list[BaseException] = []

    async def expect_closed(coro_fn: object) -> None:
        try:
            await coro_fn()  # type: ignore[operator]
        except ClosedMailbox as exc:
            errors.append(exc)

    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as tg:
            tg.start_soon(expect_closed, lambda: full.put("b"))
            tg.start_soon(expect_closed, empty.get)
            await anyio.wait_all_tasks_blocked()
            full.close()
            empty.close()
    assert len(errors) == 2
    assert not full.is_open
    assert full.statistics() == MailboxStatistics("full", 0, 1, 0, 0)  # "a" was dropped
    with pytest.raises(ClosedMailbox, match="mailbox 'full' is closed"):
        await full.put("c")
    with pytest.raises(ClosedMailbox):
        full.put_nowait("c")
    with pytest.raises(ClosedMailbox):
        full.get_nowait()
    with pytest.raises(ClosedMailbox):
        await empty.get()


async def test_receiver_gone_breaks_senders_including_parked_ones() -> None:
    mailbox = open_mailbox(1, "rx-gone")
    mailbox.put_nowait("queued")
    outcome: list[BaseException] = []

    async def parked_put() -> None:
        try:
            await mailbox.put("parked")
        except BrokenMailbox as exc:
            outcome.append(exc)

    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as tg:
            tg.start_soon(parked_put)
            await anyio.wait_all_tasks_blocked()
            assert mailbox.statistics().waiting_senders == 1
            mailbox.close_receiving()
            mailbox.close()  # a later owner close does not change the verdict
    assert len(outcome) == 1
    assert "the receiver is gone" in str(outcome[0])
    with pytest.raises(BrokenMailbox):
        await mailbox.put("late")
    with pytest.raises(BrokenMailbox):
        mailbox.try_put("late")
    with pytest.raises(ClosedMailbox):
        await mailbox.get()
