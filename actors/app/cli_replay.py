"""``ctxplane replay`` and ``ctxplane checkpoint rewind|manifest``: argparse wiring plus handlers.

The main CLI (``actors/app/cli.py``) calls :func:`add_replay_parser` on its sub-parsers and later
``args.func(args)``. Handlers return an exit code; a user mistake raises
:class:`~runtime.exceptions.UsageError` (one line, exit 2); a refusal because a supervisor holds the
SQLite lock, or a store failure, raises another :class:`~runtime.exceptions.CtxplaneError` (exit 1);
SIGINT/SIGTERM during a replay raises :class:`~runtime.exceptions.Interrupted` (exit 130/143).
The work itself lives in ``ctxplane.actors.operate.replay``; see its docstring for the semantics.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import anyio
import orjson

from ctxplane.actors.app.cli_bus import _non_negative_int

__all__ = ("add_replay_parser", "cmd_checkpoint_manifest", "cmd_checkpoint_rewind", "cmd_replay")


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


def add_progress_option(parser: argparse.ArgumentParser) -> None:
    """``--progress-every S`` of the long commands (``run --once``, ``replay``)."""
    from ctxplane.actors.operate.reporting import DEFAULT_EVERY_S

    parser.add_argument(
        "--progress-every", type=_seconds, default=DEFAULT_EVERY_S, metavar="S",
        help=f"when stderr is not a terminal, a structured progress log line at the start and every S seconds"
             f" (default {DEFAULT_EVERY_S:g}); on a terminal a live line instead; 0: neither (the summary stays)",
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

    checkpoint = subparsers.add_parser("checkpoint", help="rewind a checkpoint, or write a rebuild manifest")
    commands = checkpoint.add_subparsers(dest="checkpoint_command", metavar="COMMAND", required=True)
    rewind = commands.add_parser(
        "rewind",
        help="move one partition's checkpoint backward (audited)",
        description=(
            "Move the checkpoint of one partition backward: the only way a checkpoint moves back. "
            "The next `ctxplane run` re-delivers the records in between; they count as duplicates "
            "and change no state. Refused while `ctxplane run` holds the SQLite lock."
        ),
    )
    rewind.add_argument("--config", required=True, metavar="FILE", help="deployment profile (YAML)")
    rewind.add_argument("--topic", required=True, metavar="T")
    rewind.add_argument("--partition", required=True, type=_non_negative_int, metavar="P")
    target = rewind.add_mutually_exclusive_group(required=True)
    target.add_argument("--to-offset", type=_non_negative_int, metavar="O", help="new exclusive-next offset")
    target.add_argument("--by", type=_positive_int, metavar="N", help="move back by N offsets")
    rewind.set_defaults(func=cmd_checkpoint_rewind)

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


def _settings(args: argparse.Namespace) -> Any:
    from ctxplane.config.settings import load_settings
    from ctxplane.runtime.logs import configure_logging

    settings = load_settings(args.config)
    configure_logging(settings.logging)
    return settings


def cmd_replay(args: argparse.Namespace) -> int:
    """``replay``: validate the manifest (exit 2 on any mistake), apply it, print the one-line summary
    on stdout; progress and the structured summary go to stderr (``actors/operate/reporting.py``)."""
    from ctxplane.actors.operate.replay import ReplayReport, load_manifest, replay
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
    from ctxplane.actors.operate.replay import rewind_checkpoint

    settings = _settings(args)

    async def run() -> Any:
        return await rewind_checkpoint(settings, args.topic, args.partition, to_offset=args.to_offset, by=args.by)

    print(anyio.run(run).summary())
    return 0


def cmd_checkpoint_manifest(args: argparse.Namespace) -> int:
    """``checkpoint manifest``: the rebuild manifest for the store's current checkpoints, as JSON."""
    from ctxplane.actors.operate.replay import manifest_for_checkpoints

    settings = _settings(args)
    manifest = anyio.run(manifest_for_checkpoints, settings)
    sys.stdout.write(orjson.dumps(manifest, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0
