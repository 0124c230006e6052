"""``ctxplane replay`` and ``ctxplane checkpoint rewind|reset|manifest``: argparse wiring plus handlers.

The main CLI (``actors/app/cli.py``) calls :func:`add_replay_parser` on its sub-parsers and later
``args.func(args)``. Handlers return an exit code; a user mistake raises
:class:`~runtime.exceptions.UsageError` (one line, exit 2); a refusal because a supervisor holds the
SQLite lock, or a store failure, raises another :class:`~runtime.exceptions.CtxplaneError` (exit 1);
SIGINT/SIGTERM during a replay raises :class:`~runtime.exceptions.Interrupted` (exit 130/143).
The work itself lives in ``ctxplane.actors.operate``: ``replay`` (with ``replay_manifest`` and
``replay_windows``), ``checkpoint_rewind`` and ``checkpoint_reset``; see their docstrings for the
semantics.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import anyio
import orjson

from ctxplane.actors.app.cli_bus import _non_negative_int
from ctxplane.runtime.exceptions import UsageError

__all__ = ("add_replay_parser", "cmd_checkpoint_manifest", "cmd_checkpoint_reset", "cmd_checkpoint_rewind", "cmd_replay")


def _positive_int(text: str) -> int:
    value = _non_negative_int(text)
    if value == 0:
        raise argparse.ArgumentTypeError("expected a positive integer, got 0")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {text!r}")
    return value


# The default of --progress-every. Not imported from actors/operate/reporting.py (which has the same
# default for its own callers): building the parser must import nothing a client-only install lacks.
PROGRESS_EVERY_S = 10.0


def add_progress_option(parser: argparse.ArgumentParser) -> None:
    """``--progress-every S`` of the long commands (``run --once``, ``replay``)."""
    parser.add_argument(
        "--progress-every", type=_seconds, default=PROGRESS_EVERY_S, metavar="S",
        help=f"when stderr is not a terminal, a structured progress log line at the start and every S seconds"
             f" (default {PROGRESS_EVERY_S:g}); on a terminal a live line instead; 0: neither (the summary stays)",
    )


def add_replay_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``replay`` and ``checkpoint`` (sub-commands ``rewind`` and ``manifest``) on the main
    CLI's sub-parsers. Each leaf parser sets ``func`` to its handler."""
    replay = subparsers.add_parser(
        "replay",
        help="re-apply an explicit offset window from a manifest",
        description=(
            "Re-apply exactly the offset window a replay manifest (YAML or JSON) names: "
            "topics[{topic, partitions[{partition, from_offset?, to_offset?}]}] plus optional pins. "
            "from_offset and to_offset are inclusive; from defaults to 0, to to the current end. "
            "Same dedupe and effects as `run`; checkpoints move forward only."
        ),
    )
    replay.add_argument("--config", required=True, metavar="FILE", help="deployment profile (YAML)")
    replay.add_argument("--manifest", required=True, metavar="FILE", help="replay manifest (YAML or JSON)")
    add_progress_option(replay)
    replay.set_defaults(func=cmd_replay)

    checkpoint = subparsers.add_parser("checkpoint", help="rewind or reset checkpoints, or write a rebuild manifest")
    commands = checkpoint.add_subparsers(dest="checkpoint_command", metavar="COMMAND", required=True)
    rewind = commands.add_parser(
        "rewind",
        help="move one partition's checkpoint backward (audited)",
        description=(
            "Move the checkpoint of one partition backward (audited; `checkpoint reset` moves several). "
            "The next `ctxplane run` re-delivers the records in between; they count as duplicates "
            "and change no state. Refused while a `ctxplane run` works on the store."
        ),
    )
    rewind.add_argument("--config", required=True, metavar="FILE", help="deployment profile (YAML)")
    rewind.add_argument("--topic", required=True, metavar="T")
    rewind.add_argument("--partition", required=True, type=_non_negative_int, metavar="P")
    target = rewind.add_mutually_exclusive_group(required=True)
    target.add_argument("--to-offset", type=_non_negative_int, metavar="O", help="new exclusive-next offset")
    target.add_argument("--by", type=_positive_int, metavar="N", help="move back by N offsets")
    _audit_arguments(rewind, reason_required=False)
    rewind.set_defaults(func=cmd_checkpoint_rewind)

    reset = commands.add_parser(
        "reset",
        help="move checkpoints to the earliest / latest / a time / an offset, per topic or all partitions "
             "(audited; --dry-run shows the offsets)",
        description=(
            "Move the checkpoints of the selected partitions (file bus), as a Kafka consumer-group reset does. "
            "Back: the next `ctxplane run` reads the records in between again; they count as duplicates and "
            "change no state. Forward: the records in between are never applied; refused without --allow-skip. "
            "All partitions move in one transaction, each with an audit row in checkpoint_rewinds. Refused "
            "while a `ctxplane run` works on the store (a --dry-run is not)."
        ),
    )
    reset.add_argument("--config", required=True, metavar="FILE", help="deployment profile (YAML)")
    reset.add_argument("--topic", action="append", metavar="T",
                       help="a consumed topic (repeatable); default: every topic the enabled planes consume")
    which = reset.add_mutually_exclusive_group(required=True)
    which.add_argument("--partition", action="append", type=_non_negative_int, metavar="P",
                       help="a partition of the one --topic (repeatable)")
    which.add_argument("--all-partitions", action="store_true",
                       help="every partition of the selected topics (on the bus or with a checkpoint)")
    to = reset.add_mutually_exclusive_group(required=True)
    to.add_argument("--to-earliest", action="store_true", help="offset 0: read everything again")
    to.add_argument("--to-latest", action="store_true", help="the end of each partition now (skips what is unread)")
    to.add_argument("--to-time", metavar="RFC3339",
                    help="the first record published at or after this instant (its published_at_utc); the end if none")
    to.add_argument("--to-offset", type=_non_negative_int, metavar="O",
                    help="this offset (the end of a partition shorter than it)")
    reset.add_argument("--dry-run", action="store_true",
                       help="print the current and the would-be offset per partition; change nothing")
    reset.add_argument("--allow-skip", action="store_true",
                       help="allow moving forward past unread records (they are never applied; audited)")
    _audit_arguments(reset, reason_required=True)
    reset.add_argument("--json", action="store_true", help="machine-readable output")
    reset.set_defaults(func=cmd_checkpoint_reset)

    manifest = commands.add_parser(
        "manifest",
        help="print a replay manifest covering everything before the current checkpoints",
        description=(
            "Print (JSON) the manifest that rebuilds this store's current basis: every consumed "
            "partition from offset 0 to its checkpoint - 1. Replay it into a fresh store to rebuild."
        ),
    )
    manifest.add_argument("--config", required=True, metavar="FILE", help="deployment profile (YAML)")
    manifest.set_defaults(func=cmd_checkpoint_manifest)


def _audit_arguments(parser: argparse.ArgumentParser, *, reason_required: bool) -> None:
    required = " (required, except with --dry-run)" if reason_required else ""
    parser.add_argument("--reason", metavar="TEXT", help=f"why: recorded in the audit row{required}")
    parser.add_argument("--operator", metavar="NAME", help="who: recorded in the audit row (default USER@HOST)")


def _audit(args: argparse.Namespace, command: Any) -> Any:
    from ctxplane.actors.operate.checkpoint_audit import AuditEntry, operator_identity

    return AuditEntry(command, args.operator or operator_identity(), args.reason)


def _settings(args: argparse.Namespace) -> Any:
    from ctxplane.config.settings import load_settings
    from ctxplane.runtime.logs import configure_logging

    settings = load_settings(args.config)
    configure_logging(settings.logging)
    return settings


def cmd_replay(args: argparse.Namespace) -> int:
    """``replay``: validate the manifest (exit 2 on any mistake), apply it, print the one-line summary
    on stdout; progress and the structured summary go to stderr (``actors/operate/reporting.py``)."""
    from ctxplane.actors.operate.replay import ReplayReport, replay
    from ctxplane.actors.operate.replay_manifest import load_manifest
    from ctxplane.actors.operate.reporting import WorkReporter
    from ctxplane.runtime.signals import StopRequest, stop_on_signals

    settings = _settings(args)
    manifest = load_manifest(args.manifest)
    reporter = WorkReporter("replay", settings.topics(), every_s=args.progress_every)

    async def reported(stop: StopRequest) -> ReplayReport:
        async with reporter.running():
            report = await replay(settings, manifest, stop=stop, reporter=reporter)
            reporter.note(replay_id=report.replay_id, basis_digest=report.basis_digest)
            return report

    # SIGINT/SIGTERM: the group commit in progress finishes, the store and the lock are released,
    # and `Interrupted` exits 130/143 with one line saying where the replay stopped.
    report = anyio.run(stop_on_signals, reported)
    print(report.summary())
    return 0


def cmd_checkpoint_rewind(args: argparse.Namespace) -> int:
    """``checkpoint rewind``: one audited transaction; prints what moved where."""
    from ctxplane.actors.operate.checkpoint_rewind import rewind_checkpoint

    settings = _settings(args)

    async def run() -> Any:
        return await rewind_checkpoint(settings, args.topic, args.partition, to_offset=args.to_offset, by=args.by,
                                       audit=_audit(args, "rewind"))

    print(anyio.run(run).summary())
    return 0


def cmd_checkpoint_manifest(args: argparse.Namespace) -> int:
    """``checkpoint manifest``: the rebuild manifest for the store's current checkpoints, as JSON."""
    from ctxplane.actors.operate.replay_manifest import manifest_for_checkpoints

    settings = _settings(args)
    manifest = anyio.run(manifest_for_checkpoints, settings)
    sys.stdout.write(orjson.dumps(manifest, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


def _reset_target(args: argparse.Namespace) -> Any:
    from ctxplane.actors.operate.checkpoint_reset import ResetTarget
    from ctxplane.contracts.timestamps import parse_instant_us

    if args.to_time is not None:
        try:
            return ResetTarget("time", at_us=parse_instant_us(args.to_time))
        except ValueError as exc:
            raise UsageError(f"--to-time: {exc}") from None
    if args.to_offset is not None:
        return ResetTarget("offset", offset=args.to_offset)
    return ResetTarget("earliest" if args.to_earliest else "latest")


def _change(move: Any, *, allow_skip: bool) -> str:
    if move.change == "back":
        return f"back {move.redelivered} (read again as duplicates)"
    if move.change == "forward":
        skip = f"skip {move.skipped} (offsets {move.current}..{move.target - 1} never applied)"
        return skip if allow_skip else skip + "; needs --allow-skip"
    return "none"


def render_reset(report: Any, *, allow_skip: bool) -> str:
    """The plan (a dry run) or what moved, as a table and one closing line."""
    from ctxplane.actors.app.status_view import table

    rows = []
    for m in report.moves:
        current = str(m.current) if m.checkpoint is not None else f"{m.current} (no checkpoint)"
        notes = [_change(m, allow_skip=allow_skip)]
        notes += [f"{m.untimed} untimed lines before it"] if m.untimed else []
        notes += ["the offset is past the end"] if m.clamped else []
        rows.append([m.plane, m.topic, m.partition, current, m.target, m.end, "; ".join(notes)])
    out = [f"checkpoint reset {report.target.describe()}" + (" (dry run: nothing changed)" if report.dry_run else ""),
           *table(["plane", "topic", "partition", "current", "target", "end", "change"], rows)]
    moving = report.moving
    back = [m for m in moving if m.change == "back"]
    forward = [m for m in moving if m.change == "forward"]
    figures = (f"{len(back)} back ({sum(m.redelivered for m in back)} offsets read again), "
               f"{len(forward)} forward ({sum(m.skipped for m in forward)} offsets skipped), "
               f"{len(report.moves) - len(moving)} unchanged")
    if report.dry_run:
        out.append(f"would move {len(moving)} of {len(report.moves)} partitions: {figures}")
    else:
        who = f" by {report.audit.operator}" + (f" ({report.audit.reason})" if report.audit.reason else "")
        out.append(f"moved {len(moving)} of {len(report.moves)} partitions at {report.at_utc}{who}: {figures}; "
                   "audited in checkpoint_rewinds")
    return "\n".join(out)


def cmd_checkpoint_reset(args: argparse.Namespace) -> int:
    """``checkpoint reset``: plan (and unless ``--dry-run`` apply) one audited transaction."""
    from ctxplane.actors.operate.checkpoint_reset import reset_checkpoints

    if args.partition is not None and len(args.topic or ()) != 1:
        raise UsageError("--partition needs exactly one --topic (or use --all-partitions)")
    if not args.dry_run and not (args.reason or "").strip():
        raise UsageError("--reason is required: say why the checkpoints move (it is recorded in the audit row)")
    target = _reset_target(args)
    settings = _settings(args)
    report = anyio.run(lambda: reset_checkpoints(
        settings, topics=args.topic, partitions=args.partition, target=target, dry_run=args.dry_run,
        allow_skip=args.allow_skip, audit=_audit(args, "reset"),
    ))
    if args.json:
        sys.stdout.write(orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(render_reset(report, allow_skip=args.allow_skip))
    return 0
