"""runtime/kernel/lifecycle.py and runtime/kernel/actor.py: lifecycle table, tell/ask, refs, registry."""

from __future__ import annotations

import anyio
import pytest
from anyio.abc import TaskStatus

from ctxplane.runtime.exceptions import (
    ActorFailed,
    ActorUnavailable,
    AskTimeout,
    IllegalTransition,
)
from ctxplane.runtime.kernel import (
    Actor,
    ActorContext,
    ActorRef,
    ActorSnapshot,
    ActorState,
    ChildSpec,
    Registry,
    Restart,
)
from ctxplane.runtime.kernel.lifecycle import TRANSITIONS, Lifecycle, LifecycleEvent

from . import GUARD, Boom, Recorder, kit, make_supervisor, probe, running

S = ActorState
E = LifecycleEvent


# -- lifecycle (pure, no event loop) ---------------------------------------------------------


def test_lifecycle_happy_path_reports_each_state() -> None:
    seen: list[tuple[str, ActorState]] = []
    life = Lifecycle("a", lambda name, state: seen.append((name, state)))
    for event in (E.STARTED, E.STOP, E.EXITED):
        life.fire(event)
    assert seen == [("a", S.STARTING), ("a", S.RUNNING), ("a", S.STOPPING), ("a", S.STOPPED)]
    assert life.terminal


@pytest.mark.parametrize(
    ("events", "final"),
    [
        ((E.CRASHED,), S.FAILED),
        ((E.STARTED, E.CRASHED), S.FAILED),
        ((E.STARTED, E.STOP, E.CRASHED), S.FAILED),
        ((E.STARTED, E.CANCELLED), S.STOPPED),  # cancellation is not an error
        ((E.STOP, E.STARTED), S.STOPPING),  # stop requested while started() ran
    ],
)
def test_lifecycle_table(events: tuple[LifecycleEvent, ...], final: ActorState) -> None:
    life = Lifecycle("a")
    for event in events:
        life.fire(event)
    assert life.state is final


@pytest.mark.parametrize("terminal", [S.STOPPED, S.FAILED])
def test_terminal_states_allow_nothing(terminal: ActorState) -> None:
    assert not [key for key in TRANSITIONS if key[0] is terminal]
    life = Lifecycle("store-writer")
    life.fire(E.CRASHED if terminal is S.FAILED else E.EXITED)
    with pytest.raises(IllegalTransition) as info:
        life.fire(E.STARTED)
    message = str(info.value)
    assert (
        "'store-writer'" in message and "'started'" in message and f"'{terminal.value}'" in message
    )
    assert life.state is terminal  # an illegal move changes nothing


def test_illegal_transition_lists_the_allowed_events() -> None:
    life = Lifecycle("a")
    life.fire(E.STARTED)
    with pytest.raises(
        IllegalTransition, match=r"in state 'running' \(allowed: cancelled, crashed"
    ):
        life.fire(E.STARTED)


# -- test actors -----------------------------------------------------------------------------


class Gate(Actor):
    """Handles each message only after ``gate`` is set; ``"crash"`` then raises."""

    def __init__(self, log: list[object], gate: anyio.Event) -> None:
        self.log = log
        self.gate = gate

    async def receive(self, message: object) -> object:
        await self.gate.wait()
        if message == "crash":
            raise Boom("gate")
        self.log.append(message)
        return f"re:{message}"

    async def stopping(self) -> None:
        self.log.append("stopping")


class Looper(Actor):
    """Overrides run() the way a partition actor would; ``"exit"`` returns, ``"crash"`` raises."""

    def __init__(self, log: list[object]) -> None:
        self.log = log

    async def run(
        self, ctx: ActorContext, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        await self.started(ctx)
        task_status.started()
        while True:
            item = await ctx.mailbox.get()
            if ctx.is_stop(item):
                break
            payload, reply = ctx.unwrap(item)
            if payload == "exit":
                return
            if payload == "crash":
                raise Boom("looper")
            self.log.append(payload)
            if reply is not None:
                reply.send(("looped", payload))
        assert ctx.stop_requested.is_set()
        self.log.append("stopped")


def gate_spec(log: list[object], gate: anyio.Event, capacity: int = 4, **kw: object) -> ChildSpec:
    return ChildSpec("g", lambda: Gate(log, gate), mailbox_capacity=capacity, **kw)  # type: ignore[arg-type]


# -- tell / ask ------------------------------------------------------------------------------


async def test_tells_are_handled_in_order_and_ask_returns_the_reply() -> None:
    (registry, rec, log), gate = kit(), anyio.Event()
    gate.set()
    async with running(make_supervisor([gate_spec(log, gate)], registry=registry, recorder=rec)):
        ref = registry.ref("g")
        for i in range(10):
            await ref.tell(i)
        assert await ref.ask("last", timeout=GUARD) == "re:last"
    assert log == [*range(10), "last", "stopping"]


async def test_ask_timeout() -> None:
    (registry, rec, log), gate = kit(), anyio.Event()
    async with running(make_supervisor([gate_spec(log, gate)], registry=registry, recorder=rec)):
        with pytest.raises(AskTimeout, match=r"actor 'g' did not answer str within 0.05s"):
            await registry.ref("g").ask("slow", timeout=0.05)
        gate.set()
    with pytest.raises(ValueError, match="timeout must be > 0"):
        await registry.ref("g").ask("x", timeout=0)


async def test_ask_to_a_crashing_actor_fails_and_queued_asks_are_released() -> None:
    (registry, rec, log), gate = kit(), anyio.Event()
    spec = gate_spec(log, gate, restart=Restart.TEMPORARY)
    outcomes: dict[str, BaseException] = {}

    async def ask(message: str) -> None:
        try:
            await registry.ref("g").ask(message, timeout=GUARD)
        except (ActorFailed, ActorUnavailable) as exc:
            outcomes[message] = exc

    sup = make_supervisor([spec], registry=registry, recorder=rec)
    async with running(sup), anyio.create_task_group() as tg:
        tg.start_soon(ask, "crash")
        await anyio.wait_all_tasks_blocked()  # the actor holds "crash" and waits at the gate
        tg.start_soon(ask, "queued")
        await anyio.wait_all_tasks_blocked()
        gate.set()
    failed, queued = outcomes["crash"], outcomes["queued"]
    assert type(failed) is ActorFailed and isinstance(failed.__cause__, Boom)
    assert "actor 'g' failed while handling str" in str(failed)
    assert type(queued) is ActorUnavailable and "failed before answering" in str(queued)


async def test_tell_to_an_actor_that_is_not_running_is_refused() -> None:
    registry, rec, log = kit()
    ref = registry.ref("p")
    with pytest.raises(ActorUnavailable, match="'p' has never started"):
        await ref.tell("early")
    async with running(make_supervisor([probe("p", log)], registry=registry, recorder=rec)):
        await ref.tell("fine")
    assert ref.state is S.STOPPED
    with pytest.raises(ActorUnavailable, match="'p' is stopped"):
        await ref.tell("late")
    with pytest.raises(ActorUnavailable):
        ref.try_tell("late")
    with pytest.raises(ActorUnavailable):
        await ref.ask("late", timeout=GUARD)


async def test_try_tell_reports_a_full_mailbox() -> None:
    (registry, rec, log), gate = kit(), anyio.Event()
    async with running(
        make_supervisor([gate_spec(log, gate, capacity=1)], registry=registry, recorder=rec)
    ):
        ref = registry.ref("g")
        assert ref.try_tell(1)
        await anyio.wait_all_tasks_blocked()  # the actor took 1 and waits at the gate
        assert ref.try_tell(2)
        assert not ref.try_tell(3)
        assert ref.statistics().depth == 1
        gate.set()
    assert log == [1, 2, "stopping"]


async def test_blocked_senders_are_released_when_the_actor_crashes() -> None:
    (registry, rec, log), gate = kit(), anyio.Event()
    spec = gate_spec(log, gate, capacity=1, restart=Restart.TEMPORARY)
    released: list[BaseException] = []

    async def blocked_tell() -> None:
        try:
            await registry.ref("g").tell("never delivered")
        except ActorUnavailable as exc:
            released.append(exc)

    async with running(make_supervisor([spec], registry=registry, recorder=rec)):
        ref = registry.ref("g")
        await ref.tell("crash")
        await anyio.wait_all_tasks_blocked()
        await ref.tell("buffered")
        with anyio.fail_after(GUARD):
            async with anyio.create_task_group() as tg:
                tg.start_soon(blocked_tell)
                tg.start_soon(blocked_tell)
                await anyio.wait_all_tasks_blocked()
                assert ref.statistics().waiting_senders == 2
                gate.set()  # "crash" now raises
    assert len(released) == 2 and "'g' is failed" in str(released[0])
    assert ref.state is S.FAILED
    assert ref.statistics().depth == 0  # "buffered" died with the incarnation


async def test_graceful_stop_handles_queued_messages_first_and_still_accepts_late_ones() -> None:
    """A STOPPING actor accepts messages (in-flight work may need replies); the default loop ends
    at the stop sentinel, so what arrives after it is not handled."""
    (registry, rec, log), gate = kit(), anyio.Event()
    sup = make_supervisor([gate_spec(log, gate)], registry=registry, recorder=rec)
    async with anyio.create_task_group() as tg:
        await tg.start(sup.run)
        ref = registry.ref("g")
        for message in ("m1", "m2", "m3"):
            await ref.tell(message)
        tg.start_soon(sup.stop)
        await rec.wait_for(lambda: ref.state is S.STOPPING)
        await ref.tell("too late")  # accepted while STOPPING
        gate.set()
    assert log == ["m1", "m2", "m3", "stopping"]
    with pytest.raises(ActorUnavailable, match="is stopped"):
        await ref.tell("after the end")
    assert rec.states_of("g") == [S.STARTING, S.RUNNING, S.STOPPING, S.STOPPED]


async def test_an_overriding_run_loop_handles_asks_tells_and_stop() -> None:
    registry, rec, log = kit()
    spec = ChildSpec("loop", lambda: Looper(log), mailbox_capacity=4)
    async with running(make_supervisor([spec], registry=registry, recorder=rec)):
        ref = registry.ref("loop")
        await ref.tell("t")
        assert await ref.ask("a", timeout=GUARD) == ("looped", "a")
        with pytest.raises(ActorFailed) as info:
            await ref.ask("crash", timeout=GUARD)  # taken via unwrap(), then the loop raised
        assert isinstance(info.value.__cause__, Boom)
        await rec.wait_running("loop", times=2)
        assert await ref.ask("b", timeout=GUARD) == ("looped", "b")
    assert log == ["t", "a", "b", "stopped"]


# -- refs and registry -----------------------------------------------------------------------


async def test_refs_survive_restarts_and_reach_the_new_incarnation() -> None:
    registry, rec, log = kit()
    async with running(make_supervisor([probe("p", log)], registry=registry, recorder=rec)):
        ref = registry.ref("p")
        assert registry.ref("p") is ref
        first = await ref.ask("who", timeout=GUARD)
        await ref.tell("crash")
        await rec.wait_running("p", times=2)
        second = await ref.ask("who", timeout=GUARD)
    assert isinstance(first, tuple) and isinstance(second, tuple)
    assert first[0] == second[0] == "p" and first[1] != second[1]  # same name, new instance
    assert log == ["start:p", "start:p", "stop:p"]


async def test_registry_snapshot_shows_depth_capacity_and_restarts() -> None:
    (registry, rec, log), gate = kit(), anyio.Event()
    children = [gate_spec(log, gate, capacity=5), probe("p", log)]
    async with running(make_supervisor(children, registry=registry, recorder=rec)):
        await registry.ref("p").tell("crash")
        await rec.wait_running("p", times=2)
        for i in range(3):
            await registry.ref("g").tell(i)
        await anyio.wait_all_tasks_blocked()  # g holds 0 at the gate; 1 and 2 wait
        assert registry.snapshot() == [
            ActorSnapshot("g", S.RUNNING, depth=2, capacity=5, restarts=0),
            ActorSnapshot("p", S.RUNNING, depth=0, capacity=8, restarts=1),
        ]
        gate.set()
    assert [row.state for row in registry.snapshot()] == [S.STOPPED, S.STOPPED]


def test_kernel_objects_come_only_from_factories() -> None:
    with pytest.raises(TypeError, match="no public constructor"):
        ActorRef(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="no public constructor"):
        ActorContext(None, None)  # type: ignore[arg-type]


async def test_receive_must_be_implemented() -> None:
    registry, rec = Registry(), Recorder()
    spec = ChildSpec("bare", Actor, mailbox_capacity=1, restart=Restart.TEMPORARY)
    async with running(make_supervisor([spec], registry=registry, recorder=rec)):
        with pytest.raises(ActorFailed) as info:
            await registry.ref("bare").ask("x", timeout=GUARD)
    assert isinstance(info.value.__cause__, NotImplementedError)


def test_kernel_all_matches_its_public_names() -> None:
    import types

    import ctxplane.runtime.kernel as kernel

    public = {
        name for name, value in vars(kernel).items()
        if not name.startswith("_") and name != "annotations" and not isinstance(value, types.ModuleType)
    }
    assert isinstance(kernel.__all__, tuple)
    assert set(kernel.__all__) == public
    assert len(kernel.__all__) == len(public)
