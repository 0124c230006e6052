"""``ctxplane run``: build the process-scoped resources, run the supervision tree, stop cleanly."""

from __future__ import annotations

import signal
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import orjson
import structlog

from ctxplane.actors.app.tree import CHECKPOINT, build_root, known_restarts
from ctxplane.actors.ingest.progress import IngestProgress
from ctxplane.actors.operate.reporting import WorkReporter
from ctxplane.actors.resources import AppContext, open_bus, open_ready_store, scope_of, tune_gc_for_ingest
from ctxplane.actors.serve.metrics import Metrics
from ctxplane.config.settings import Settings
from ctxplane.contracts.health import load_health_policy
from ctxplane.runtime.exceptions import Interrupted, UsageError
from ctxplane.runtime.kernel import Registry
from ctxplane.runtime.signals import STOP_SIGNALS, StopRequest

__all__ = ("open_bus", "run_process", "scope_of")

log = structlog.get_logger("ctxplane.run")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ctxplane")
    except PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown"


def _features_policy(features: object) -> str:
    policy = getattr(features, "policy", None)
    return f"{policy.policy_id}@{policy.revision}" if policy is not None else "disabled"


def serve_metrics(listen: str, metrics: Metrics) -> Callable[[], None]:
    """Serve the probes and metrics on ``listen`` (HOST:PORT); returns the function that stops the server.

    ``/metrics``: Prometheus exposition (OpenMetrics when asked for). ``/healthz``: 200 while the
    process runs (liveness). ``/readyz``: 200 when the store is reachable and partitions are assigned,
    503 otherwise, with a JSON body saying why (:meth:`Metrics.readiness`). Anything else: 404.
    """
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from prometheus_client.exposition import choose_encoder

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
                self._answer(200, content_type, encoder(metrics.registry))
            elif path == "/healthz":
                self._answer(200, "text/plain; charset=utf-8", b"ok\n")
            elif path == "/readyz":
                ready, detail = metrics.readiness()
                self._answer(200 if ready else 503, "application/json", orjson.dumps(detail) + b"\n")
            else:
                self._answer(404, "text/plain; charset=utf-8", b"not found: /metrics, /healthz, /readyz\n")

        def _answer(self, code: int, content_type: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - scrapes are not log lines
            return

    host, _, port = listen.rpartition(":")
    try:
        server = ThreadingHTTPServer((host, int(port)), Handler)
    except (OSError, ValueError) as exc:
        raise UsageError(f"metrics.listen: cannot listen on {listen}: {getattr(exc, 'strerror', None) or exc}") from None
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)

    return stop


def _warn_unread_planes(settings: Settings, partitions: dict[tuple[str, int], str]) -> None:
    """Say so when an enabled plane finds none of its topics on the bus: it starts with no partition
    and reads nothing until one appears (a typo in its ``topics``, or the wrong ``bus.root``)."""
    from ctxplane.actors.app.bus_topics import file_bus_topics, unread_topics

    consumed = settings.topics()
    on_bus = file_bus_topics(settings.bus.root) if settings.bus.kind == "file" else {}
    for plane in sorted(set(consumed.values())):
        if any(p == plane for p in partitions.values()):
            continue
        topics = sorted(topic for topic, p in consumed.items() if p == plane)
        extra = {"unread_topics_on_bus": [t["topic"] for t in unread_topics(on_bus, consumed)]} if on_bus else {}
        log.warning("no topic of this plane exists on the bus: it reads nothing until one appears",
                    plane=plane, topics=topics, bus=settings.bus.kind,
                    bus_root=str(settings.bus.root) if settings.bus.kind == "file" else None, **extra)


async def run_process(settings: Settings, *, once: bool = False, reporter: WorkReporter | None = None) -> None:
    """Run the supervisor until SIGINT/SIGTERM (or, with ``once``, until every partition is drained).

    ``reporter`` (``run --once``) is told every group commit, reports progress while the process
    runs and writes the summary when it stops (``actors/operate/reporting.py``).

    Signals are watched from the first instant: a signal during start-up abandons the start-up
    cleanly; afterwards it triggers the graceful stop (stop reading, commit in-flight batches).

    Raises:
        Interrupted: with ``once``, a signal stopped the process before every partition was
            drained (the CLI exits 130/143, so a script can tell it from a full drain). Without
            ``once`` a signal is the normal way to stop, and the call returns.
    """
    # Worker threads (SQLite writer, bus reads) hand the GIL back to the event loop sooner, so a
    # long commit does not delay query answers by a whole default 5 ms switch interval.
    sys.setswitchinterval(0.0005)
    signalled = StopRequest()
    drained: list[int] = []  # [partitions drained, partitions expected, 1 if all drained] after the run
    async with anyio.create_task_group() as tg:
        startup = anyio.CancelScope()
        stop = anyio.Event()

        async def watch_signals(*, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
            with anyio.open_signal_receiver(*STOP_SIGNALS) as signals:
                task_status.started()
                # Kept open until the process ends: a second Ctrl-C during the graceful stop must not
                # become a KeyboardInterrupt (runtime/signals.py says why that is dangerous).
                async for signum in signals:
                    if signalled.requested:
                        log.info("already stopping", signal=signal.Signals(signum).name)
                        continue
                    log.info("stopping", signal=signal.Signals(signum).name)
                    signalled.set(signum)
                    stop.set()
                    startup.cancel()

        await tg.start(watch_signals)
        await _run(settings, once=once, startup=startup, stop=stop, drained=drained, reporter=reporter)
        tg.cancel_scope.cancel()
    if once and signalled.requested and not (drained and drained[2]):
        assert signalled.signum is not None
        done = f"{drained[0]} of {drained[1]} partitions drained" if drained else "before start-up completed"
        raise Interrupted(signalled.signum, (
            f"run --once interrupted by {signalled.name} ({done}): every committed batch is kept; "
            "run it again to finish the drain"
        ))


async def _lag_by_plane(app: AppContext) -> dict[str, int | None]:
    """Records on the bus not committed yet, per plane, as the checkpoint actor last saw the ends
    (``None`` for a plane with a partition whose lag the bus cannot count, e.g. Kinesis)."""
    snapshot: Any = await app.registry.ref(CHECKPOINT).ask("positions", timeout=2.0)
    lag: dict[str, int | None] = {}
    for p in snapshot["partitions"]:
        before = lag.get(p["plane"], 0)
        lag[p["plane"]] = None if before is None or p["lag"] is None else before + p["lag"]
    return lag


@asynccontextmanager
async def _reporting(reporter: WorkReporter | None, app: AppContext) -> AsyncIterator[None]:
    if reporter is None:
        yield
        return
    progress = app.progress
    async with reporter.running(lag=lambda: _lag_by_plane(app),
                                drained=lambda: (progress.idle_count, progress.expected_count)):
        yield
        if not progress.all_idle:
            reporter.incomplete()


async def _run(settings: Settings, *, once: bool, startup: anyio.CancelScope, stop: anyio.Event,
               drained: list[int], reporter: WorkReporter | None) -> None:
    async with AsyncExitStack() as stack:
        with startup:
            if settings.store.backend == "sqlite":
                from ctxplane.runtime.store.sqlite import SqliteLock

                lock = SqliteLock(settings.store.sqlite_path)
                lock.acquire()
                stack.callback(lock.release)
            read_store = await open_ready_store(settings)
            stack.push_async_callback(read_store.aclose)
            bus = open_bus(settings)
            stack.push_async_callback(bus.aclose)
            partitions: dict[tuple[str, int], str] = {}
            for topic, plane in settings.topics().items():
                for partition in await bus.list_partitions(topic):
                    partitions[(topic, partition)] = plane
            registry = Registry()
            metrics = Metrics(registry)
            metrics.known_partitions(partitions)
            app = AppContext(
                settings=settings, bus=bus, read_store=read_store, registry=registry,
                progress=IngestProgress(set(partitions)), scope=scope_of(settings), partitions=partitions,
                observer=metrics,
            )
            if settings.metrics.listen:
                stack.callback(serve_metrics(settings.metrics.listen, metrics))
            from ctxplane.actors.serve.features import build_feature_plane

            app.health_policy = load_health_policy(settings.health.policy)

            app.features = build_feature_plane(settings) if settings.features.enabled else None
            if reporter is not None:
                app.commit_listeners.append(reporter.committed)
            root = build_root(app)
            metrics.known_restarts(*known_restarts(app))
            metrics.build_info(
                version=_version(), health_policy=f"{app.health_policy.policy_id}@{app.health_policy.revision}",
                features_policy=_features_policy(app.features), backend=settings.store.backend, bus=settings.bus.kind,
            )
            tune_gc_for_ingest()
            _warn_unread_planes(settings, partitions)  # after every refusal above: a refused start says one line
            log.info("starting", store=settings.store.redacted_dsn, bus=settings.bus.kind,
                     partitions=len(partitions), once=once)
        if startup.cancelled_caught:
            log.info("stopped before start-up completed")
            return
        async with anyio.create_task_group() as tg:
            if reporter is not None:
                reporter.start()  # partition actors read and commit from the moment the tree starts
            await tg.start(root.run)
            log.info("running", listen=settings.query.listen)

            async def until_drained() -> None:
                await app.progress.wait_all_idle()
                log.info("drained every partition; stopping")
                stop.set()

            if once:
                tg.start_soon(until_drained)
            async with _reporting(reporter, app):  # the graceful stop commits too: reported
                await stop.wait()
                await root.stop()
            tg.cancel_scope.cancel()
        drained[:] = [app.progress.idle_count, app.progress.expected_count, int(app.progress.all_idle)]
        log.info("stopped")
