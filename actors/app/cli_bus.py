"""``ctxplane bus publish|create|tail``: the bus sub-commands, as argparse wiring plus handlers.

The main CLI (``actors/app/cli.py``) calls :func:`add_bus_parser` on its sub-parsers and later
``args.func(args)``. Handlers return an exit code; a user mistake raises
:class:`~runtime.exceptions.UsageError` with one line that names the culprit (the CLI prints it and
exits 2), a runtime failure raises another :class:`~runtime.exceptions.CtxplaneError` (exit 1).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import anyio
import orjson

from ctxplane.runtime.exceptions import BusError, CtxplaneError, UsageError

if TYPE_CHECKING:
    from ctxplane.runtime.bus import FileBus

__all__ = (
    "add_bus_parser",
    "cmd_bus_create",
    "cmd_bus_publish",
    "cmd_bus_tail",
    "parse_envelope_lines",
)

# `bus tail` prints this many records per partition unless --max says otherwise (the origin's
# tail default); 0 means no limit.
_DEFAULT_TAIL_MAX = 20
# Records per read while tailing: small enough to print promptly, large enough to be cheap.
_TAIL_BATCH = 1000
_TAIL_BATCH_BYTES = 16 * 1024 * 1024
# Guard against a typo creating a million files; far above any real file-bus topic.
_MAX_PARTITIONS = 4096


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if not 1 <= value <= _MAX_PARTITIONS:
        raise argparse.ArgumentTypeError(
            f"expected an integer in 1..{_MAX_PARTITIONS}, got {value}"
        )
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {value}")
    return value


def _add_bus_location(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--config", metavar="FILE", help="ctxplane config file; its bus section is used"
    )
    where.add_argument(
        "--root", metavar="DIR", help="file bus root directory (shortcut for a file bus)"
    )


def add_bus_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``bus`` and its sub-commands ``publish``, ``create`` and ``tail`` (docs/events.md §The file bus)
    on the main CLI's sub-parsers. Each leaf parser sets ``func`` to its handler."""
    bus = subparsers.add_parser("bus", help="publish to, create or read the event bus")
    commands = bus.add_subparsers(dest="bus_command", metavar="COMMAND", required=True)

    publish = commands.add_parser(
        "publish",
        help="publish envelopes (one JSON object per line), routed by partition key",
        description=(
            "Publish envelopes, one JSON object per line, from FILE or stdin. The partition key is "
            "payload field F (--key-field), else payload merchant_id, then flow_id, then event_id."
        ),
    )
    _add_bus_location(publish)
    publish.add_argument("--topic", required=True, metavar="T")
    publish.add_argument(
        "--partitions",
        type=_positive_int,
        metavar="N",
        help="partition count when the topic does not exist yet (default 1); must match if it does",
    )
    publish.add_argument("--key-field", metavar="F", help="payload field holding the partition key")
    publish.add_argument(
        "input", nargs="?", default="-", metavar="FILE|-", help="input (default: stdin)"
    )
    publish.set_defaults(func=cmd_bus_publish)

    create = commands.add_parser("create", help="create a topic with N partitions")
    _add_bus_location(create)
    create.add_argument("--topic", required=True, metavar="T")
    create.add_argument("--partitions", required=True, type=_positive_int, metavar="N")
    create.set_defaults(func=cmd_bus_create)

    tail = commands.add_parser(
        "tail",
        help="print records as 'partition offset raw-line'",
        description="Print a topic's records as 'PARTITION OFFSET RAW-LINE', by partition.",
    )
    _add_bus_location(tail)
    tail.add_argument("--topic", required=True, metavar="T")
    tail.add_argument(
        "--partition", type=_non_negative_int, metavar="P", help="only this partition"
    )
    tail.add_argument(
        "--from-offset", type=_non_negative_int, metavar="O", help="first line index (default 0)"
    )
    tail.add_argument(
        "--max",
        type=_non_negative_int,
        default=_DEFAULT_TAIL_MAX,
        metavar="N",
        help=f"records per partition (default {_DEFAULT_TAIL_MAX}; 0 = all)",
    )
    tail.set_defaults(func=cmd_bus_tail)


def _bus_location(args: argparse.Namespace, settings: Any = None) -> tuple[Path | None, Any]:
    """``(file bus root, None)`` for ``--root`` or a file-bus config; ``(None, bus settings)`` when
    ``--config`` names a Kinesis bus. The config is loaded once (or given, already loaded)."""
    if args.root is not None:
        return Path(args.root), None
    if settings is None:
        # Imported here: settings pulls in pydantic models the --root path never needs.
        from ctxplane.config.settings import load_settings

        settings = load_settings(args.config)
    if settings.bus.kind == "kinesis":
        return None, settings.bus
    return Path(settings.bus.root), None


def _file_bus_root(args: argparse.Namespace) -> Path:
    """The file bus root named by ``--root`` or by the config's ``bus`` section.

    Raises:
        UsageError: the config names a Kinesis bus (``tail`` reads file buses only), or is invalid.
    """
    root, _kinesis = _bus_location(args)
    if root is None:
        raise UsageError("bus tail reads file buses only; the config names a Kinesis bus")
    return root


def _open_input(source: str) -> IO[bytes]:
    if source == "-":
        stdin: Any = sys.stdin
        buffer = getattr(stdin, "buffer", None)
        if buffer is None:
            raise UsageError("stdin is not readable as bytes; pass the input as FILE instead")
        return buffer  # type: ignore[no-any-return]
    try:
        return open(source, "rb")
    except OSError as exc:
        raise UsageError(f"cannot read input file {source}: {exc.strerror}") from None


def parse_envelope_lines(
    lines: Iterable[bytes], key_field: str | None
) -> list[tuple[str, Mapping[str, Any]]]:
    """Decode JSON-lines input into ``(partition_key, envelope)`` pairs; blank lines are skipped.

    Raises:
        UsageError: naming the 1-based line number, when a line is not JSON, not an object, or has
            no partition key. Nothing is published in that case.
    """
    from ctxplane.runtime.bus import partition_key_for  # the bus adapters are a server install: imported on use

    items: list[tuple[str, Mapping[str, Any]]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            envelope = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise UsageError(f"line {number}: not valid JSON ({exc})") from None
        if not isinstance(envelope, dict):
            raise UsageError(
                f"line {number}: expected a JSON object (one envelope per line), "
                f"got a JSON {type(envelope).__name__}"
            )
        try:
            key = partition_key_for(envelope, key_field)
        except BusError as exc:
            raise UsageError(f"line {number}: {exc}") from None
        items.append((key, envelope))
    return items


def _os_failure(exc: OSError, doing: str) -> CtxplaneError:
    """One line for an OS error: a path the user named is a usage error, anything else a failure."""
    where = f" ({exc.filename})" if exc.filename else ""
    if isinstance(
        exc, PermissionError | FileNotFoundError | NotADirectoryError | IsADirectoryError
    ):
        return UsageError(f"cannot {doing}: {exc.strerror}{where}")
    return CtxplaneError(f"cannot {doing}: {exc.strerror or exc}{where}")


def cmd_bus_publish(args: argparse.Namespace) -> int:
    """``bus publish``: validate every input line first (nothing is published if one is bad), then
    publish all with one fsync per partition file (Kinesis: PutRecords batches). Prints
    ``published N records to T (P partitions)``; on stderr, a warning when no plane reads T (with
    ``--root``: no plane of the default configuration)."""
    from ctxplane.actors.app.bus_topics import unread_warning
    from ctxplane.runtime.bus import FileBus  # the bus adapters are a server install: imported on use

    if args.root is None:
        from ctxplane.config.settings import load_settings

        settings = load_settings(args.config)
        consumed, whose = settings.topics(), str(args.config)
    else:
        from ctxplane.config.settings import Settings

        settings = None
        consumed, whose = Settings().topics(), "the default configuration (--root names no config)"
    root, kinesis = _bus_location(args, settings)
    warning = unread_warning(args.topic, consumed, whose)
    stream = _open_input(args.input)
    try:
        items = parse_envelope_lines(stream, args.key_field)
    finally:
        if stream is not getattr(sys.stdin, "buffer", None):
            stream.close()
    if kinesis is not None:
        from ctxplane.actors.app.cli_bus_kinesis import publish_to_kinesis

        print(publish_to_kinesis(kinesis, args.topic, items, args.partitions))
        _warn(warning)
        return 0
    assert root is not None

    async def run() -> int:
        async with FileBus(root) as bus:
            existing = await bus.list_partitions(args.topic)
            if existing and args.partitions is not None and len(existing) != args.partitions:
                raise UsageError(
                    f"topic {args.topic} already has {len(existing)} partitions under {root}; "
                    f"--partitions {args.partitions} does not match"
                )
            if not existing:
                await bus.create_topic(args.topic, args.partitions or 1)
            await bus.publish_many(args.topic, items)
            return len(await bus.list_partitions(args.topic))

    try:
        count = anyio.run(run)
    except BusError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise _os_failure(exc, f"publish to {root}") from None
    print(f"published {len(items)} records to {args.topic} ({count} partitions)")
    _warn(warning)
    return 0


def _warn(warning: str | None) -> None:
    if warning is not None:
        print(f"ctxplane: {warning}", file=sys.stderr)


def cmd_bus_create(args: argparse.Namespace) -> int:
    """``bus create``: create the topic's N partition files (Kinesis: a stream with N shards,
    waiting until it is active); a no-op if they already exist."""
    from ctxplane.runtime.bus import FileBus  # the bus adapters are a server install: imported on use

    root, kinesis = _bus_location(args)
    if kinesis is not None:
        from ctxplane.actors.app.cli_bus_kinesis import create_on_kinesis

        print(create_on_kinesis(kinesis, args.topic, args.partitions))
        return 0
    assert root is not None

    async def run() -> bool:
        async with FileBus(root) as bus:
            existed = bool(await bus.list_partitions(args.topic))
            await bus.create_topic(args.topic, args.partitions)
            return existed

    try:
        existed = anyio.run(run)
    except BusError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise _os_failure(exc, f"create topic {args.topic} under {root}") from None
    state = "already exists with" if existed else "created with"
    print(f"topic {args.topic} {state} {args.partitions} partitions under {root}")
    return 0


def cmd_bus_tail(args: argparse.Namespace) -> int:
    """``bus tail``: print ``PARTITION OFFSET RAW-LINE`` for up to ``--max`` records per partition,
    starting at ``--from-offset`` (default 0). Raw bytes that are not UTF-8 are shown with
    backslash escapes."""
    from ctxplane.runtime.bus import FileBus  # the bus adapters are a server install: imported on use

    root = _file_bus_root(args)
    out = sys.stdout

    async def run() -> None:
        async with FileBus(root) as bus:
            partitions = await bus.list_partitions(args.topic)
            if not partitions:
                raise UsageError(
                    f"unknown topic {args.topic} under {root} (no partition=<n>.jsonl files)"
                )
            if args.partition is not None:
                if args.partition not in partitions:
                    raise UsageError(
                        f"topic {args.topic} has no partition {args.partition} "
                        f"(partitions: {', '.join(map(str, partitions))})"
                    )
                partitions = [args.partition]
            for partition in partitions:
                await _tail_partition(
                    bus, args.topic, partition, args.from_offset or 0, args.max, out
                )

    try:
        anyio.run(run)
    except BusError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise _os_failure(exc, f"read topic {args.topic} under {root}") from None
    return 0


async def _tail_partition(
    bus: FileBus, topic: str, partition: int, from_offset: int, limit: int, out: IO[str]
) -> None:
    position = str(from_offset)
    printed = 0
    while limit == 0 or printed < limit:
        want = _TAIL_BATCH if limit == 0 else min(_TAIL_BATCH, limit - printed)
        result = await bus.read(topic, partition, position, want, _TAIL_BATCH_BYTES)
        for record in result.records:
            text = record.raw.decode("utf-8", "backslashreplace")
            if record.full_size is not None:  # a line past the record limit: only its start was read
                text += f" ... [{record.full_size} bytes, first {len(record.raw)} shown]"
            out.write(f"{record.partition} {record.offset} {text}\n")
        printed += len(result.records)
        if result.next_position == position:
            break
        position = result.next_position
