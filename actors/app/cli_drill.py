"""``ctxplane drill NAME --config FILE [options]``: failure drills against a running supervisor.

The main CLI (``actors/app/cli.py``) calls :func:`add_drill_parser` on its sub-parsers and later
``args.func(args)``. Each drill prints a verdict line (``drill NAME: PASS`` or ``FAIL`` naming the
failed checks), one line of figures, and one line per check; ``--json`` prints the same as JSON.
Exit codes: 0 PASS; 1 FAIL or a runtime failure; 2 bad usage (including "drills are disabled in the
running process"). The drills themselves live in ``actors/drills/`` (``db_outage.py``,
``offset_rollback.py``, ``conflict_storm.py``, ``actor_fault.py``); ``ops/RUNBOOK.md`` says how to
read each verdict and what to do when one fails.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import anyio
import orjson

__all__ = ("add_drill_parser", "cmd_drill")

DRILLS = ("db-outage", "offset-rollback", "conflict-storm", "actor-fault")


def _int_at_least(text: str, floor: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = floor - 1
    if value < floor:
        kind = "positive" if floor == 1 else "non-negative"
        raise argparse.ArgumentTypeError(f"expected a {kind} integer, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    return _int_at_least(text, 1)


def _non_negative_int(text: str) -> int:
    return _int_at_least(text, 0)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def add_drill_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``drill`` (sub-commands: the four drills) on the main CLI's sub-parsers."""
    drill = subparsers.add_parser(
        "drill", help="run a failure drill against the running supervisor (needs drills.enabled: true)",
        description="Failure drills against a running `ctxplane run`: each prints a verdict with "
                    "figures. The process must run with drills.enabled: true. See ops/RUNBOOK.md.",
    )
    names = drill.add_subparsers(dest="drill", metavar="NAME", required=True)

    def common(name: str, help_text: str) -> argparse.ArgumentParser:
        p = names.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--config", required=True, metavar="FILE", help="the running process's profile (YAML)")
        p.add_argument("--json", action="store_true", help="print the report as JSON")
        p.set_defaults(func=cmd_drill)
        return p

    def clean_pass(p: argparse.ArgumentParser) -> None:
        p.add_argument("--no-clean-pass", dest="clean_pass", action="store_false",
                       help="skip the digest comparison with a clean replay of the same basis (it re-reads the whole bus)")

    p = common("db-outage", "stop PostgreSQL or cut its connections for N seconds under load, then restore")
    p.add_argument("--seconds", type=_positive_float, default=5.0, metavar="N", help="outage length (default 5)")
    p.add_argument("--events", type=_positive_int, default=5000, help="events published through the drill (default 5000)")
    p.add_argument("--payload-bytes", type=_non_negative_int, default=0, metavar="B",
                   help="pad every drill event's payload by B bytes (memory under a backlog; default 0)")
    p.add_argument("--method", choices=("proxy", "pg-ctl"), default=None,
                   help="proxy (needs --proxy-control) or pg-ctl (needs PGBIN/PGROOT); default: proxy if "
                        "--proxy-control is given, else pg-ctl")
    p.add_argument("--proxy-control", metavar="unix:PATH", help="control socket of `python -m ctxplane.actors.drills.faultproxy`")
    p.add_argument("--fault", choices=("cut", "blackhole"), default="cut", help="proxy fault (default cut)")
    p.add_argument("--pgbin", default=os.environ.get("PGBIN"), help="PostgreSQL binaries (default $PGBIN)")
    p.add_argument("--pgroot", default=os.environ.get("PGROOT"), help="ops/pg_up.sh data root (default $PGROOT)")
    p.add_argument("--deadline-ms", type=_positive_int, default=1000, help="deadline of the probe queries")
    p.add_argument("--rss-growth-mb", type=_positive_float, default=100.0, help="allowed RSS growth during the outage")
    clean_pass(p)

    p = common("offset-rollback", "rewind checkpoints by N offsets in the running process; expect zero state change")
    p.add_argument("--by", type=_positive_int, required=True, metavar="N")
    p.add_argument("--topic", metavar="T", help="only this topic (default: every consumed partition)")
    p.add_argument("--partition", type=_non_negative_int, metavar="P", help="only this partition of --topic")

    p = common("conflict-storm", "publish conflicting anchors and payload-hash mismatches; expect anomalies only")
    p.add_argument("--count", type=_positive_int, default=2000, metavar="K", help="conflicts and mismatches (default 2000 each)")
    p.add_argument("--min-throughput-ratio", type=_positive_float, default=0.2,
                   help="storm events/s must be at least this fraction of a clean load's (default 0.2)")
    clean_pass(p)

    p = common("actor-fault", "crash partition actors or the store-writer; expect restarts per strategy")
    p.add_argument("--target", choices=("partition", "store-writer"), required=True)
    p.add_argument("--times", type=_positive_int, default=1, metavar="N",
                   help="faults to inject; over several partition actors they go back to back (default 1)")
    p.add_argument("--topic", metavar="T", help="partition target: only this topic's actors")
    p.add_argument("--partition", type=_non_negative_int, metavar="P", help="partition target: only this one")
    p.add_argument("--events", type=_positive_int, default=2000, help="events published while faults land (default 2000)")
    clean_pass(p)


def cmd_drill(args: argparse.Namespace) -> int:
    """Run the named drill; print its report; exit 0 on PASS, 1 on FAIL."""
    from ctxplane.actors.drills.actor_fault import ActorFaultOptions, run_actor_fault
    from ctxplane.actors.drills.conflict_storm import ConflictStormOptions, run_conflict_storm
    from ctxplane.actors.drills.db_outage import DbOutageOptions, run_db_outage
    from ctxplane.actors.drills.offset_rollback import OffsetRollbackOptions, run_offset_rollback
    from ctxplane.config.settings import load_settings
    from ctxplane.runtime.exceptions import UsageError
    from ctxplane.runtime.logs import configure_logging

    settings = load_settings(args.config)
    configure_logging(settings.logging)
    if getattr(args, "partition", None) is not None and getattr(args, "topic", None) is None:
        raise UsageError("--partition needs --topic")
    run: Any
    if args.drill == "db-outage":
        method = args.method or ("proxy" if args.proxy_control else "pg-ctl")
        options: Any = DbOutageOptions(
            seconds=args.seconds, events=args.events, payload_bytes=args.payload_bytes, method=method, proxy_control=args.proxy_control,
            fault=args.fault, pgbin=args.pgbin, pgroot=args.pgroot, deadline_ms=args.deadline_ms,
            clean_pass=args.clean_pass, rss_growth_mb=args.rss_growth_mb,
        )
        run = run_db_outage
    elif args.drill == "offset-rollback":
        options = OffsetRollbackOptions(by=args.by, topic=args.topic, partition=args.partition)
        run = run_offset_rollback
    elif args.drill == "conflict-storm":
        options = ConflictStormOptions(count=args.count, min_throughput_ratio=args.min_throughput_ratio,
                                       clean_pass=args.clean_pass)
        run = run_conflict_storm
    else:
        options = ActorFaultOptions(target=args.target, times=args.times, topic=args.topic,
                                    partition=args.partition, events=args.events, clean_pass=args.clean_pass)
        run = run_actor_fault
    report = anyio.run(run, settings, options)
    if args.json:
        sys.stdout.write(orjson.dumps(report.as_json(), option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode() + "\n")
    else:
        print(report.render())
    return 0 if report.passed else 1
