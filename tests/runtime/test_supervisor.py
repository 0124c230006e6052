"""runtime/kernel/supervisor.py: start/stop order, strategies, restart types, intensity, backoff."""

from __future__ import annotations

import random

import anyio
import pytest
from anyio.abc import TaskStatus
from hypothesis import given
from hypothesis import strategies as st

from ctxplane.runtime.exceptions import (
    ActorNameTaken,
    ActorUnavailable,
    SupervisorEscalation,
    SupervisorStopped,
)
from ctxplane.runtime.kernel import (
    Actor,
    ActorContext,
    ActorState,
    Backoff,
    ChildSpec,
    Intensity,
    Registry,
    Restart,
    Strategy,
    Supervisor,
)

from . import GUARD, Boom, Probe, Recorder, kit, make_supervisor, probe, running
from .test_actor import Looper

S = ActorState


class FailsToStart(Actor):
    """Its started() hook raises: every start attempt fails."""

    async def started(self, ctx: ActorContext) -> None:
        raise Boom(f"{ctx.name} cannot start")


class Stuck(Actor):
    """Ignores the stop sentinel: its receive never returns unless cancelled."""

    def __init__(self, log: list[object]) -> None:
        self.log = log

    async def receive(self, message: object) -> object:
        try:
            await anyio.Event().wait()
        except BaseException:
            self.log.append("stuck:cancelled")
            raise
        return None


async def run_expecting_escalation(sup: Supervisor) -> SupervisorEscalation:
    with anyio.fail_after(GUARD), pytest.raises(SupervisorEscalation) as info:
        await sup.run()
    return info.value


# -- policies (pure) -------------------------------------------------------------------------


@given(
    attempt=st.integers(0, 1000),
    seed=st.integers(),
    initial=st.floats(0.0, 1.0),
    jitter=st.floats(0.0, 0.99),
)
def test_backoff_delay_stays_within_jitter_band_and_cap(
    attempt: int, seed: int, initial: float, jitter: float
) -> None:
    backoff = Backoff(initial=initial, maximum=5.0, multiplier=2.0, jitter=jitter)
    base = min(initial * 2.0**attempt, 5.0)
    delay = backoff.delay(attempt, random.Random(seed))
    assert base * (1 - jitter) - 1e-9 <= delay <= min(base * (1 + jitter), 5.0) + 1e-9
    assert delay == backoff.delay(attempt, random.Random(seed))  # pure: same rng, same delay


def test_backoff_grows_exponentially_until_the_cap() -> None:
    backoff = Backoff(initial=0.1, maximum=1.0, multiplier=2.0, jitter=0.0)
    rng = random.Random(0)
    assert [backoff.delay(n, rng) for n in range(6)] == pytest.approx(
        [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    )
    assert backoff.delay(10**6, rng) == 1.0  # far past float range: capped, no OverflowError
    assert Backoff(initial=0.0).delay(10**6, rng) == 0.0
    with pytest.raises(ValueError, match="attempt must be >= 0"):
        backoff.delay(-1, rng)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Backoff(initial=2.0, maximum=1.0),
        lambda: Backoff(multiplier=0.5),
        lambda: Backoff(jitter=1.0),
        lambda: Intensity(max_restarts=-1),
        lambda: Intensity(period=0),
        lambda: ChildSpec("x", FailsToStart, mailbox_capacity=0),
        lambda: ChildSpec("x", FailsToStart, shutdown_timeout=0),
        lambda: ChildSpec("", FailsToStart),
    ],
)
def test_invalid_policies_are_refused(make: object) -> None:
    with pytest.raises(ValueError):
        make()  # type: ignore[operator]


# -- start and shutdown order ----------------------------------------------------------------


async def test_children_start_in_order_each_fully_started_and_stop_in_reverse() -> None:
    registry, rec, log = kit()

    class Dependent(Probe):
        async def started(self, ctx: ActorContext) -> None:
            # Every earlier sibling must already be RUNNING when this one starts.
            states = [registry.ref(n).state for n in "abc" if n < self.name]
            log.append(f"start:{self.name}:{[s.value for s in states if s]}")

    def dependent(name: str) -> ChildSpec:
        return ChildSpec(name, lambda: Dependent(name, log), mailbox_capacity=2)

    sup = make_supervisor([dependent(n) for n in "abc"], registry=registry, recorder=rec)
    assert sup.state is None
    async with running(sup):
        assert sup.state is S.RUNNING
    assert log == [
        "start:a:[]",
        "start:b:['running']",
        "start:c:['running', 'running']",
        "stop:c",
        "stop:b",
        "stop:a",
    ]
    assert sup.state is S.STOPPED
    assert rec.states_of("root") == [S.STARTING, S.RUNNING, S.STOPPING, S.STOPPED]


async def test_shutdown_timeout_cancels_a_stuck_child_and_the_rest_still_stop() -> None:
    registry, rec, log = kit()
    children = [
        probe("a", log),
        ChildSpec("stuck", lambda: Stuck(log), mailbox_capacity=1, shutdown_timeout=0.05),
    ]
    sup = make_supervisor(children, registry=registry, recorder=rec)
    ref = registry.ref("stuck")

    async def blocked_tell() -> None:
        with pytest.raises(ActorUnavailable):
            await ref.tell("parked")
        log.append("sender released")

    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as tg:
            await tg.start(sup.run)
            await ref.tell("hold")
            await anyio.wait_all_tasks_blocked()  # stuck holds "hold" forever
            await ref.tell("fills the mailbox")
            tg.start_soon(blocked_tell)
            await anyio.wait_all_tasks_blocked()
            # Even the stop sentinel cannot get in: the timeout must cancel the child.
            await sup.stop()
    assert "sender released" in log
    assert [e for e in log if e != "sender released"] == ["start:a", "stuck:cancelled", "stop:a"]
    assert rec.states_of("stuck")[-2:] == [S.STOPPING, S.STOPPED]  # cancelled is not FAILED


async def test_cancelling_run_stops_every_child() -> None:
    registry, rec, log = kit()
    sup = make_supervisor([probe("a", log), probe("b", log)], registry=registry, recorder=rec)
    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as tg:
            await tg.start(sup.run)
            tg.cancel_scope.cancel()
    assert registry.ref("a").state is S.STOPPED and registry.ref("b").state is S.STOPPED
    assert sup.state is S.STOPPED
    with pytest.raises(ActorUnavailable):
        await registry.ref("a").tell("x")


async def test_a_failed_start_is_retried_with_backoff() -> None:
    registry, rec, log = kit()
    attempts = iter([Boom("first"), Boom("second"), None])

    class Flaky(Probe):
        async def started(self, ctx: ActorContext) -> None:
            error = next(attempts)
            if error is not None:
                raise error
            await super().started(ctx)

    spec = ChildSpec("f", lambda: Flaky("f", log), mailbox_capacity=2)
    sup = make_supervisor([spec], registry=registry, recorder=rec)
    async with running(sup):
        assert sup.statistics().restarts == {"f": 2}
    assert [str(reason) for _, _, reason, _ in rec.restarts] == ["first", "second"]
    assert log == ["start:f", "stop:f"]


async def test_supervisor_instances_run_once() -> None:
    registry, rec = Registry(), Recorder()
    sup = make_supervisor([], registry=registry, recorder=rec)
    async with running(sup):
        pass
    with pytest.raises(RuntimeError, match="already ran"):
        await sup.run()


async def test_an_actor_child_without_capacity_is_a_bug_not_a_retry() -> None:
    registry, rec, log = kit()
    sup = make_supervisor(
        [probe("a", log), ChildSpec("nocap", lambda: Probe("nocap", log))],
        registry=registry,
        recorder=rec,
    )
    with anyio.fail_after(GUARD), pytest.raises(ValueError, match="mailbox_capacity is required"):
        await sup.run()
    assert log == ["start:a", "stop:a"] and not rec.restarts


# -- strategies ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("strategy", "after_crash"),
    [
        (Strategy.ONE_FOR_ONE, ["start:b"]),
        (Strategy.REST_FOR_ONE, ["stop:d", "stop:c", "start:b", "start:c", "start:d"]),
        (
            Strategy.ONE_FOR_ALL,
            ["stop:d", "stop:c", "stop:a", "start:a", "start:b", "start:c", "start:d"],
        ),
    ],
)
async def test_each_strategy_restarts_exactly_the_right_children_in_order(
    strategy: Strategy, after_crash: list[str]
) -> None:
    registry, rec, log = kit()
    sup = make_supervisor(
        [probe(n, log) for n in "abcd"], registry=registry, recorder=rec, strategy=strategy
    )
    async with running(sup):
        await registry.ref("b").tell("crash")
        last = after_crash[-1].removeprefix("start:")
        await rec.wait_running(last, times=2)
        assert log[4:] == after_crash
        restarted = {entry.removeprefix("start:") for entry in after_crash if "start" in entry}
        assert sup.statistics().restarts == {n: int(n in restarted) for n in "abcd"}
        assert [child for _, child, _, _ in rec.restarts] == sorted(restarted)
    assert log[-4:] == ["stop:d", "stop:c", "stop:b", "stop:a"]


async def test_one_for_one_crashes_never_take_siblings_down() -> None:
    registry, rec, log = kit()
    sup = make_supervisor([probe("a", log), probe("b", log)], registry=registry, recorder=rec)
    async with running(sup):
        before = await registry.ref("b").ask("who", timeout=GUARD)
        for n in range(1, 6):
            await registry.ref("a").tell("crash")
            await rec.wait_running("a", times=n + 1)
            assert await registry.ref("b").ask("who", timeout=GUARD) == before
    assert sup.statistics().restarts == {"a": 5, "b": 0}
    assert rec.states_of("b") == [S.STARTING, S.RUNNING, S.STOPPING, S.STOPPED]


# -- restart types ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("restart", "how", "restarted"),
    [
        (Restart.PERMANENT, "exit", True),
        (Restart.PERMANENT, "crash", True),
        (Restart.TRANSIENT, "exit", False),
        (Restart.TRANSIENT, "crash", True),
        (Restart.TEMPORARY, "exit", False),
        (Restart.TEMPORARY, "crash", False),
    ],
)
async def test_restart_types(restart: Restart, how: str, restarted: bool) -> None:
    registry, rec, log = kit()
    children = [
        ChildSpec("x", lambda: Looper([]), mailbox_capacity=2, restart=restart),
        probe("marker", log),
    ]
    sup = make_supervisor(children, registry=registry, recorder=rec)
    async with running(sup):
        await registry.ref("x").tell(how)
        await rec.wait_for(lambda: registry.ref("x").state in (S.STOPPED, S.FAILED))
        # Exits are handled in arrival order: once the marker's restart is done, so is x's.
        await registry.ref("marker").tell("crash")
        await rec.wait_running("marker", times=2)
        assert (rec.count("x", S.RUNNING) == 2) is restarted
        assert (registry.ref("x").state is S.RUNNING) is restarted
        assert ("x" in sup.statistics().restarts) is (restart is not Restart.TEMPORARY)
    reasons = [reason for _, child, reason, _ in rec.restarts if child == "x"]
    if restarted:
        assert len(reasons) == 1 and (reasons[0] is None) is (how == "exit")
    else:
        assert reasons == []


async def test_temporary_siblings_are_stopped_but_never_restarted_collaterally() -> None:
    registry, rec, log = kit()
    children = [probe("a", log), probe("t", log, restart=Restart.TEMPORARY), probe("b", log)]
    sup = make_supervisor(children, registry=registry, recorder=rec, strategy=Strategy.ONE_FOR_ALL)
    async with running(sup):
        await registry.ref("a").tell("crash")
        await rec.wait_running("b", times=2)
        assert sup.statistics().running == ("a", "b")
    assert log == [
        "start:a",
        "start:t",
        "start:b",
        "stop:b",
        "stop:t",
        "start:a",
        "start:b",
        "stop:b",
        "stop:a",
    ]
    assert registry.ref("t").state is S.STOPPED


# -- intensity and escalation ----------------------------------------------------------------


async def test_exceeding_intensity_escalates_after_stopping_every_child() -> None:
    registry, rec, log = kit()
    sup = make_supervisor(
        [probe("a", log), probe("b", log)],
        registry=registry,
        recorder=rec,
        intensity=Intensity(max_restarts=2, period=60.0),
    )
    caught: list[SupervisorEscalation] = []

    async def supervise(*, task_status: TaskStatus[None]) -> None:
        try:
            await sup.run(task_status=task_status)
        except SupervisorEscalation as exc:
            caught.append(exc)

    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as tg:
            await tg.start(supervise)
            for n in range(1, 3):
                await registry.ref("b").tell("crash")
                await rec.wait_running("b", times=n + 1)
            await registry.ref("b").tell("crash")  # the third restart within the period
    assert len(caught) == 1 and isinstance(caught[0].__cause__, Boom)
    assert "3 restarts within 60.0s exceed max_restarts=2" in str(caught[0])
    assert log[-1] == "stop:a" and log.count("start:b") == 3
    assert sup.state is S.FAILED and sup.statistics().escalations == 1
    assert [s for s, _ in rec.escalations] == ["root"]
    assert registry.ref("a").state is S.STOPPED


async def test_restarts_older_than_the_period_do_not_count() -> None:
    registry, rec, log = kit()
    # Each restart waits >= 1 ms of backoff, so no two restarts fall within 1 microsecond.
    sup = make_supervisor(
        [probe("a", log)],
        registry=registry,
        recorder=rec,
        intensity=Intensity(max_restarts=1, period=1e-6),
    )
    async with running(sup):
        for n in range(1, 5):
            await registry.ref("a").tell("crash")
            await rec.wait_running("a", times=n + 1)
    assert sup.statistics().escalations == 0 and not rec.escalations


async def test_nested_supervisor_escalation_reaches_the_parent() -> None:
    registry, rec, log = kit()

    def inner() -> Supervisor:
        return make_supervisor(
            [ChildSpec("w", FailsToStart, mailbox_capacity=2)],
            registry=registry,
            recorder=rec,
            intensity=Intensity(max_restarts=1, period=60.0),
            name="inner",
        )

    outer = make_supervisor(
        [probe("sib", log), ChildSpec("inner", inner)],
        registry=registry,
        recorder=rec,
        intensity=Intensity(max_restarts=1, period=60.0),
        name="outer",
    )
    error = await run_expecting_escalation(outer)
    # inner escalates, outer restarts it once, inner escalates again, outer gives up.
    assert [s for s, _ in rec.escalations] == ["inner", "inner", "outer"]
    outer_restarts = [(child, reason) for s, child, reason, _ in rec.restarts if s == "outer"]
    assert len(outer_restarts) == 1 and outer_restarts[0][0] == "inner"
    assert isinstance(outer_restarts[0][1], SupervisorEscalation)
    assert "supervisor 'outer' gave up" in str(error)
    assert isinstance(error.__cause__, SupervisorEscalation) and "'inner'" in str(error.__cause__)
    assert isinstance(error.__cause__.__cause__, Boom)
    assert log == ["start:sib", "stop:sib"]


async def test_a_nested_supervisor_restarts_as_one_child() -> None:
    registry, rec, log = kit()

    def inner() -> Supervisor:
        return make_supervisor(
            [probe("w1", log), probe("w2", log)],
            registry=registry,
            recorder=rec,
            intensity=Intensity(max_restarts=0, period=60.0),
            name="inner",
        )

    outer = make_supervisor(
        [ChildSpec("inner", inner), probe("after", log)],
        registry=registry,
        recorder=rec,
        strategy=Strategy.REST_FOR_ONE,
        name="outer",
    )
    async with running(outer):
        await registry.ref("w2").tell("crash")  # inner allows no restart: it escalates
        await rec.wait_running("after", times=2)
        reply = await registry.ref("w1").ask("ping", timeout=GUARD)
        assert reply[0] == "w1"  # type: ignore[index]  # the ref reaches the new incarnation
    assert log == [
        "start:w1",
        "start:w2",
        "start:after",
        "stop:w1",
        "stop:after",
        "start:w1",
        "start:w2",
        "start:after",
        "stop:after",
        "stop:w2",
        "stop:w1",
    ]


# -- backoff, observed -----------------------------------------------------------------------


async def test_observed_backoff_grows_to_the_cap() -> None:
    registry, rec = Registry(), Recorder()
    sup = make_supervisor(
        [ChildSpec("w", FailsToStart, mailbox_capacity=2)],
        registry=registry,
        recorder=rec,
        intensity=Intensity(max_restarts=4, period=60.0),
        backoff=Backoff(initial=0.001, maximum=0.004, multiplier=2.0, jitter=0.0),
    )
    await run_expecting_escalation(sup)
    assert [delay for *_, delay in rec.restarts] == pytest.approx([0.001, 0.002, 0.004, 0.004])


@pytest.mark.parametrize(("reset_after", "expected"), [(3600.0, [1, 2, 4, 8]), (0.0, [1, 1, 1, 1])])
async def test_backoff_resets_once_the_child_stayed_up_long_enough(
    reset_after: float, expected: list[int]
) -> None:
    registry, rec, log = kit()
    backoff = Backoff(initial=0.0001, maximum=1.0, jitter=0.0, reset_after=reset_after)
    sup = make_supervisor([probe("a", log)], registry=registry, recorder=rec, backoff=backoff)
    async with running(sup):
        for n in range(1, 5):
            await registry.ref("a").tell("crash")
            await rec.wait_running("a", times=n + 1)
    delays = [delay / 0.0001 for *_, delay in rec.restarts]
    assert delays == pytest.approx(expected)


# -- dynamic children ------------------------------------------------------------------------


async def test_dynamic_children_start_and_terminate() -> None:
    registry, rec, log = kit()
    sup = make_supervisor([probe("a", log)], registry=registry, recorder=rec)
    async with running(sup):
        await sup.start_child(probe("p1", log))
        assert (await registry.ref("p1").ask("who", timeout=GUARD))[0] == "p1"  # type: ignore[index]
        with pytest.raises(ActorNameTaken):
            await sup.start_child(probe("p1", log))
        with pytest.raises(Boom, match="cannot start"):
            await sup.start_child(ChildSpec("bad", FailsToStart, mailbox_capacity=2))
        await sup.start_child(probe("p2", log))
        assert sup.statistics().running == ("a", "p1", "p2")
        await sup.terminate_child("p1")
        assert registry.ref("p1").state is S.STOPPED
        assert sup.statistics().running == ("a", "p2")
        with pytest.raises(KeyError, match="no child 'p1'"):
            await sup.terminate_child("p1")
        await registry.ref("p2").tell("crash")  # dynamic children are supervised too
        await rec.wait_running("p2", times=2)
    assert log == ["start:a", "start:p1", "start:p2", "stop:p1", "start:p2", "stop:p2", "stop:a"]
    with pytest.raises(SupervisorStopped):
        await sup.start_child(probe("p3", log))
    with pytest.raises(SupervisorStopped):
        await sup.terminate_child("a")
