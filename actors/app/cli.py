"""The ``ctxplane`` command line (README.md §Running it; every command: ``ctxplane --help``).

Exit codes: 0 success; 2 bad usage or invalid configuration (one line naming the key); 1 runtime
failure; 130 / 143 a ``replay`` or ``run --once`` stopped early by SIGINT / SIGTERM (one line saying
where). Every user mistake is one clear line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import anyio
import orjson

from ctxplane.contracts.answers import ERROR_STATUSES, Status
from ctxplane.runtime.exceptions import CtxplaneError, Interrupted, UsageError

__all__ = ("main",)


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _settings(args: argparse.Namespace) -> Any:
    from ctxplane.config.settings import load_settings

    return load_settings(args.config)


def _print_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode() + "\n")


def cmd_run(args: argparse.Namespace) -> int:
    from ctxplane.actors.app.process import run_process
    from ctxplane.runtime.logs import configure_logging

    settings = _settings(args)
    configure_logging(settings.logging)
    reporter = None
    if args.once:
        from ctxplane.actors.operate.reporting import WorkReporter

        reporter = WorkReporter("run --once", settings.topics(), every_s=args.progress_every)
    anyio.run(lambda: run_process(settings, once=args.once, reporter=reporter))
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from ctxplane.runtime.store import open_store

    settings = _settings(args)

    async def migrate() -> list[int]:
        async with await open_store(settings.store) as store:
            return await store.migrate()

    applied = anyio.run(migrate)
    print(f"applied migrations: {', '.join(map(str, applied))}" if applied else "schema is up to date")
    return 0


def cmd_digest(args: argparse.Namespace) -> int:
    from ctxplane.actors.operate.digest import (
        ledger_digest_program,
        state_digest_program,
    )
    from ctxplane.runtime.store import open_store

    settings = _settings(args)

    async def digest() -> str:
        async with await open_store(settings.store) as store:
            status = await store.schema_status()
            if status.pending:
                raise UsageError("the store has no current schema; run `ctxplane migrate` or `ctxplane run` first")
            return await store.read(ledger_digest_program() if args.ledger else state_digest_program())

    print(anyio.run(digest))
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    """The runs the store holds with their full ContextPins (one per line, or ``--json``)."""
    from ctxplane.actors.operate.run_list import render_runs, runs_program
    from ctxplane.runtime.store import open_store

    settings = _settings(args)

    async def runs() -> list[dict[str, Any]]:
        async with await open_store(settings.store) as store:
            if (await store.schema_status()).pending:
                raise UsageError("the store has no current schema; run `ctxplane migrate` or `ctxplane run` first")
            return await store.read(runs_program())

    found = anyio.run(runs)
    if args.json:
        _print_json(found)
    elif found:
        print(render_runs(found))
    else:
        print("the store holds no runs yet (no event was applied)", file=sys.stderr)
    return 0


def _operator_deadline_ms(settings: Any) -> int:
    """The deadline of the operator's `status` / `ack` requests: 5 s (capped by query.max_deadline_ms),
    so a loaded machine answers the health actor's state rather than HEALTH_UNAVAILABLE after 0.8 s."""
    return int(min(5000, settings.query.max_deadline_ms))


def _request_once(settings: Any, request: dict[str, Any]) -> dict[str, Any]:
    from ctxplane.config.settings import secret_value
    from ctxplane.runtime.client import Client

    with Client(settings.query.listen, auth_token=secret_value(settings.query.auth_token)) as client:
        return client.request(request)




def cmd_query(args: argparse.Namespace) -> int:
    """One request (printed indented) or NDJSON, one request a line (one answer a line, pipelined
    on one connection). Exit 1 when any answer is an error, 0 otherwise."""
    settings = _settings(args)
    text = args.request
    if text == "-":
        text = sys.stdin.read()
    elif text.startswith("@"):
        try:
            text = Path(text[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot read request file {text[1:]}: {exc.strerror}") from None
    try:
        single = orjson.loads(text)
    except orjson.JSONDecodeError:
        single = None
    if isinstance(single, dict):
        answer = _request_once(settings, single)
        _print_json(answer)
        return 1 if answer.get("status") in ERROR_STATUSES else 0
    requests = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            request = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise UsageError(f"request line {number} is not valid JSON: {exc}") from None
        if not isinstance(request, dict):
            raise UsageError(f"request line {number} must be a JSON object")
        requests.append(request)
    if not requests:
        raise UsageError("no request given (REQUEST_JSON: a JSON object, @FILE, or - for NDJSON on stdin)")
    from ctxplane.config.settings import secret_value
    from ctxplane.runtime.client import Client

    with Client(settings.query.listen, auth_token=secret_value(settings.query.auth_token)) as client:
        answers = client.request_many(requests)
    for answer in answers:
        sys.stdout.write(orjson.dumps(answer, option=orjson.OPT_NON_STR_KEYS).decode() + "\n")
    return 1 if any(answer.get("status") in ERROR_STATUSES for answer in answers) else 0


# `status --check`: the exit code says the state (0 below --fail-on; 3 AMBER, 4 RED at or above it).
STATUS_EXIT = {"AMBER": 3, "RED": 4}
_RANK = {"GREEN": 0, "AMBER": 1, "RED": 2}


def cmd_status(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.offline:
        return _status_offline(settings, args)
    answer = _request_once(settings, {"op": "health", "deadline_ms": _operator_deadline_ms(settings)})
    health = answer.get("health", {})
    state = health.get("state", "RED")
    if args.json:
        _print_json({**answer, "unread_topics": _unread_topics(settings)})
    elif args.check:
        reasons = health.get("reasons", [])
        print(f"{state}: {', '.join(reasons)}" if reasons else state)
    else:
        from ctxplane.actors.app.status_view import render_status

        print(render_status(answer, unread_topics=_unread_topics(settings)))
    if args.check and _RANK.get(state, 2) >= _RANK[args.fail_on.upper()]:
        return STATUS_EXIT.get(state, STATUS_EXIT["RED"])
    return 0


def _status_offline(settings: Any, args: argparse.Namespace) -> int:
    """``status --offline``: checkpoints, bus positions, lag and the ledger, from the store and the bus."""
    from ctxplane.actors.operate.offline_status import offline_status
    from ctxplane.runtime.logs import configure_logging

    configure_logging(settings.logging)  # log lines (the bus adapter's) go to stderr, never into --json
    if args.check:
        raise UsageError("--check asks the running process for its health; --offline reads positions and the "
                         "ledger only (no health to check)")
    report = anyio.run(offline_status, settings)
    if args.json:
        _print_json({**report, "unread_topics": _unread_topics(settings)})
    else:
        from ctxplane.actors.app.status_view import render_offline_status

        print(render_offline_status(report, unread_topics=_unread_topics(settings)))
    return 0


def _unread_topics(settings: Any) -> list[dict[str, Any]]:
    """Topics on the (file) bus that no plane reads: records published there are never applied."""
    from ctxplane.actors.app.bus_topics import file_bus_topics, unread_topics

    if settings.bus.kind != "file":
        return []  # a Kinesis account holds other applications' streams too: not ours to list
    return unread_topics(file_bus_topics(Path(settings.bus.root)), settings.topics())


def _verdict(state: str, reasons: list[str]) -> str:
    return f"{state} ({', '.join(reasons)})" if reasons else state


def cmd_ack(args: argparse.Namespace) -> int:
    from ctxplane.actors.operate.checkpoint_audit import operator_identity

    settings = _settings(args)
    by = args.by or operator_identity()
    answer = _request_once(settings, {"op": "health_ack", "by": by, "reason": args.reason,
                                      "deadline_ms": _operator_deadline_ms(settings)})
    if answer.get("status") != Status.OK:
        print(f"ctxplane: acknowledgement refused: {answer.get('code')}: {answer.get('detail')}", file=sys.stderr)
        return 1
    if args.json:
        _print_json(answer)
        return 0
    before, after, ack = answer["before"], answer["after"], answer["ack"]
    print(f"acknowledged by {ack['by']} at {ack['acked_at_utc']}: "
          f"{_verdict(before['state'], before['reasons'])} -> {_verdict(after['state'], after['reasons'])}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ctxplane.actors.operate.demo_workload import demo_pins, write_demo_bus

    counts = write_demo_bus(Path(args.root), args.flows, partitions=args.partitions)
    total = sum(counts.values()) if isinstance(counts, dict) else counts
    print(f"wrote a demo workload of {args.flows} flows ({total} events) to {args.root}")
    # The pins every query about this run presents (`ctxplane runs` prints them from the store too).
    print(f"pins: {orjson.dumps(demo_pins()).decode()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from ctxplane.actors.app.cli_replay import add_progress_option

    parser = _Parser(prog="ctxplane", description="Decision-time context plane: join and feature projections served over a socket.")
    parser.add_argument("--version", action="version", version=f"ctxplane {_version()}")
    sub: argparse._SubParsersAction[argparse.ArgumentParser] = parser.add_subparsers(
        dest="command", required=True, parser_class=_Parser)

    def with_config(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--config", required=True, help="deployment profile (YAML)")
        return p

    p = with_config("run", "start the supervisor")
    p.add_argument("--once", action="store_true", help="drain every assigned partition, commit, exit 0; progress"
                   " and a closing summary (applied, duplicates, rejected by reason, seconds) on stderr")
    add_progress_option(p)
    p.set_defaults(func=cmd_run)
    with_config("migrate", "apply pending schema migrations").set_defaults(func=cmd_migrate)
    p = with_config("query", "send requests to the running query endpoint and print the answers "
                             "(exit 1 when any answer is an error)")
    p.add_argument("request", metavar="REQUEST_JSON",
                   help="a JSON object, @FILE, or - for stdin; a file or stdin may hold NDJSON, one request a line")
    p.set_defaults(func=cmd_query)
    p = with_config("status", "health, lag and basis per partition, from the running process"
                              " (--offline: positions, lag and the ledger from the store and the bus alone)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--offline", action="store_true",
                   help="ask no process: per partition the stored checkpoint, the bus's end and the lag, plus the"
                        " ledger counts, from the store and the bus alone (no health: it lives in the process)")
    p.add_argument("--check", action="store_true",
                   help="for probes and scripts: print one line (GREEN, or STATE: REASONS) and exit by the state:"
                        " 0 below --fail-on, 3 AMBER, 4 RED; 1 when no process answered")
    p.add_argument("--fail-on", choices=("amber", "red"), default="amber",
                   help="with --check: the state from which the exit code is not 0 (default amber)")
    p.set_defaults(func=cmd_status)
    p = with_config("ack", "acknowledge the current health: counted signals (ledger rows, misses, restarts) count"
                           " only what happens after now; audited in health_acks.jsonl beside the artifact")
    p.add_argument("--reason", required=True, help="why (recorded with the acknowledgement)")
    p.add_argument("--by", help="who acknowledges (default: USER@HOST)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_ack)
    p = with_config("digest", "print the semantic state digest of the store")
    p.add_argument("--ledger", action="store_true", help="digest the apply-failure ledger instead")
    p.set_defaults(func=cmd_digest)
    p = with_config("runs", "list the runs the store holds with their full ContextPins (the pins a query needs),"
                            " from the store alone")
    p.add_argument("--json", action="store_true", help="machine-readable output (a JSON array)")
    p.set_defaults(func=cmd_runs)
    p = sub.add_parser("demo", help="write a synthetic, valid workload to a file bus")
    p.add_argument("--flows", type=int, default=50)
    p.add_argument("--partitions", type=int, default=2)
    p.add_argument("--root", default="runs/demo/eb")
    p.set_defaults(func=cmd_demo)
    from ctxplane.actors.app.cli_bus import add_bus_parser

    add_bus_parser(sub)
    from ctxplane.actors.app.cli_replay import add_replay_parser
    add_replay_parser(sub)
    from ctxplane.actors.app.cli_drill import add_drill_parser
    add_drill_parser(sub)
    from ctxplane.actors.app.cli_config import add_config_parser
    add_config_parser(sub)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ctxplane")
    except PackageNotFoundError:  # pragma: no cover - running from a tree that is not installed
        return "unknown"


# The top-level modules of the ``server`` extra (pyproject.toml) and what they pull in: a client-only
# install (``pip install ctxplane``) lacks them, and a command that needs them says so.
SERVER_MODULES = frozenset({
    "asyncpg", "aioboto3", "aiobotocore", "boto3", "botocore", "structlog", "prometheus_client", "msgspec", "rich",
})


def main(argv: Sequence[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else list(argv)
    if not arguments:
        build_parser().print_help(sys.stderr)
        return 2
    try:
        args = build_parser().parse_args(arguments)
        return int(args.func(args) or 0)
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in SERVER_MODULES:
            raise
        print(f"ctxplane: `ctxplane {arguments[0]}` needs the server install (module {exc.name} is missing):"
              " pip install 'ctxplane[server]'", file=sys.stderr)
        return 2
    except UsageError as exc:
        _say(exc)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): not an error worth a traceback.
        sys.stderr.close()
        return 0
    except Interrupted as exc:
        print(f"ctxplane: {exc}", file=sys.stderr)
        return exc.exit_code
    except CtxplaneError as exc:
        _say(exc)
        return 1
    except BaseExceptionGroup as group:
        first = _first_leaf(group)
        if isinstance(first, Interrupted):
            print(f"ctxplane: {first}", file=sys.stderr)
            return first.exit_code
        if isinstance(first, UsageError):
            _say(first)
            return 2
        if isinstance(first, CtxplaneError):
            _say(first)
            return 1
        raise


def _say(exc: BaseException) -> None:
    """One line per problem on stderr (a configuration may have several, all reported at once)."""
    for line in str(exc).splitlines() or [""]:
        print(f"ctxplane: {line}", file=sys.stderr)


def _first_leaf(group: BaseExceptionGroup[Any]) -> BaseException:
    first: BaseException = group
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return first


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
