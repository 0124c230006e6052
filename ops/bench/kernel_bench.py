"""Actor kernel benchmark: tell throughput and ask round trips, against raw-stream floors.

Run: ``.venv/bin/python ops/bench/kernel_bench.py [--messages N] [--asks N] [--runs N]``

Prints a table and writes ``ops/bench/results/kernel.json``. Every figure is the median of
``--runs`` runs. The floors run the same traffic over a bare anyio memory object stream in the same
process and run, so the ratio shows what the kernel (ref lookup, state check, ask envelope, reply
slot, timeout scope) costs on this machine, independent of how noisy the machine is.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from anyio.streams.memory import MemoryObjectReceiveStream

from ctxplane.runtime.kernel import Actor, ChildSpec, Registry, Strategy, Supervisor

RESULTS = Path(__file__).resolve().parent / "results" / "kernel.json"
#: Big enough that the consumer drains a batch per wake-up, small enough to exercise backpressure.
CAPACITY = 1024


class Sink(Actor):
    """Counts tells and sets ``done`` at the expected count; answers asks with the message."""

    def __init__(self, expected: int, done: anyio.Event) -> None:
        self.expected = expected
        self.done = done
        self.count = 0

    async def receive(self, message: object) -> object:
        self.count += 1
        if self.count == self.expected:
            self.done.set()
        return message


async def _with_sink(
    expected: int, body: Callable[[Registry, anyio.Event], Awaitable[float]]
) -> float:
    registry, done = Registry(), anyio.Event()
    sup = Supervisor(
        "bench",
        [ChildSpec("sink", lambda: Sink(expected, done), mailbox_capacity=CAPACITY)],
        strategy=Strategy.ONE_FOR_ONE,
        registry=registry,
        rng=random.Random(0),
    )
    async with anyio.create_task_group() as tg:
        await tg.start(sup.run)
        elapsed = await body(registry, done)
        await sup.stop()
    return elapsed


async def tell_throughput(n: int) -> float:
    """Messages/s from one producer task through ``ActorRef.tell`` into one actor."""

    async def body(registry: Registry, done: anyio.Event) -> float:
        ref = registry.ref("sink")
        start = time.perf_counter()
        for i in range(n):
            await ref.tell(i)
        await done.wait()
        return time.perf_counter() - start

    return n / await _with_sink(n, body)


async def ask_rate(n: int) -> float:
    """Sequential ask round trips/s (each ask waits for its reply before the next)."""

    async def body(registry: Registry, done: anyio.Event) -> float:
        ref = registry.ref("sink")
        start = time.perf_counter()
        for i in range(n):
            await ref.ask(i, timeout=10.0)
        return time.perf_counter() - start

    return n / await _with_sink(n, body)


async def _consume_fast(receive: MemoryObjectReceiveStream[object]) -> None:
    """Drain with the kernel's fast path: receive_nowait first, park only when empty."""
    with receive:
        while True:
            try:
                receive.receive_nowait()
            except anyio.WouldBlock:
                try:
                    await receive.receive()
                except anyio.EndOfStream:
                    return
            except anyio.EndOfStream:
                return


async def stream_floor(n: int) -> float:
    """Floor for tell: a bare memory stream of the same capacity, with the same fast paths."""
    send, receive = anyio.create_memory_object_stream[object](CAPACITY)
    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        tg.start_soon(_consume_fast, receive)
        with send:
            for i in range(n):
                try:
                    send.send_nowait(i)
                except anyio.WouldBlock:
                    await send.send(i)
    return n / (time.perf_counter() - start)


async def naive_stream(n: int) -> float:
    """For context: the same stream driven with plain ``send()``/``async for`` (one scheduling
    point per message), which is what the fast paths save."""
    send, receive = anyio.create_memory_object_stream[object](CAPACITY)

    async def consume() -> None:
        with receive:
            async for _ in receive:
                pass

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        with send:
            for i in range(n):
                await send.send(i)
    return n / (time.perf_counter() - start)


async def round_trip_floor(n: int) -> float:
    """Floor for ask: (message, Event) over a bare stream, waited on under a deadline scope -
    the least an ask with a timeout can do on anyio."""
    send, receive = anyio.create_memory_object_stream[tuple[object, anyio.Event]](CAPACITY)

    async def echo() -> None:
        with receive:
            async for _, event in receive:
                event.set()

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        tg.start_soon(echo)
        with send:
            for i in range(n):
                event = anyio.Event()
                with anyio.CancelScope(deadline=anyio.current_time() + 10.0):
                    send.send_nowait((i, event))
                    await event.wait()
    return n / (time.perf_counter() - start)


def median_of(
    runs: int, fn: Callable[[int], Awaitable[float]], n: int
) -> tuple[float, list[float]]:
    samples = [anyio.run(fn, n) for _ in range(runs)]
    return statistics.median(samples), samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--asks", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    rows = [
        ("tell (kernel)", "msg/s", tell_throughput, args.messages),
        ("floor: bare stream, same fast paths", "msg/s", stream_floor, args.messages),
        ("context: bare stream, plain send()", "msg/s", naive_stream, args.messages),
        ("ask (kernel)", "round trips/s", ask_rate, args.asks),
        ("floor: Event + deadline scope", "round trips/s", round_trip_floor, args.asks),
    ]
    results: dict[str, dict[str, object]] = {}
    for label, unit, fn, n in rows:
        median, samples = median_of(args.runs, fn, n)
        results[label] = {
            "unit": unit,
            "n": n,
            "median": round(median),
            "samples": [round(s) for s in samples],
        }

    def ratio(floor: str, kernel: str) -> float:
        return float(results[floor]["median"]) / float(results[kernel]["median"])  # type: ignore[arg-type]

    tell_ratio = ratio("floor: bare stream, same fast paths", "tell (kernel)")
    ask_ratio = ratio("floor: Event + deadline scope", "ask (kernel)")
    print(f"actor kernel, median of {args.runs} runs, mailbox capacity {CAPACITY}")
    print(f"{'what':<38}{'n':>9}{'median':>14}  unit")
    for label, row in results.items():
        print(f"{label:<38}{row['n']:>9}{row['median']:>14,}  {row['unit']}")
    print(
        f"floor/kernel (x times faster than the kernel): tell {tell_ratio:.2f}, ask {ask_ratio:.2f}"
    )

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "benchmark": "kernel",
                "runs": args.runs,
                "mailbox_capacity": CAPACITY,
                "python": platform.python_version(),
                "anyio": importlib.metadata.version("anyio"),
                "results": results,
                "floor_over_kernel": {"tell": round(tell_ratio, 2), "ask": round(ask_ratio, 2)},
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
