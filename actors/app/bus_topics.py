"""Which topics the bus holds and which of them no plane reads (``bus publish``, ``status``, ``run``).

A record published to a topic no plane consumes is never read: usually a typo in the topic name
(``arival_events``) or a plane's ``topics`` list that misses it. These helpers say so, with the
closest consumed topic. The file bus's layout is pinned (interfaces: ``<root>/<topic>/partition=<n>.jsonl``),
so its topics are the directories that hold partition files.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

__all__ = ("closest_topic", "file_bus_topics", "unread_topics", "unread_warning")

_PARTITION_FILE = re.compile(r"^partition=\d+\.jsonl$")


def file_bus_topics(root: Path) -> dict[str, int]:
    """Topic -> number of partition files, for every topic directory under a file bus ``root``
    (an absent root holds no topic)."""
    topics: dict[str, int] = {}
    try:
        entries = sorted(root.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return topics
    for entry in entries:
        if entry.is_dir():
            count = sum(1 for file in entry.iterdir() if _PARTITION_FILE.match(file.name))
            if count:
                topics[entry.name] = count
    return topics


def closest_topic(topic: str, consumed: Iterable[str]) -> str | None:
    """The consumed topic ``topic`` is most likely a misspelling of, if any is close."""
    close = difflib.get_close_matches(topic, list(consumed), n=1, cutoff=0.8)
    return close[0] if close else None


def unread_topics(on_bus: Mapping[str, int], consumed: Mapping[str, str]) -> list[dict[str, object]]:
    """The topics on the bus that no plane reads: ``{topic, partitions, did_you_mean}`` each."""
    return [{"topic": topic, "partitions": partitions, "did_you_mean": closest_topic(topic, consumed)}
            for topic, partitions in sorted(on_bus.items()) if topic not in consumed]


def unread_warning(topic: str, consumed: Mapping[str, str], whose: str) -> str | None:
    """One line for a publish to ``topic`` when no plane in ``consumed`` reads it, else None.

    Args:
        whose: whose planes ``consumed`` lists, e.g. ``"ctxplane.yaml"`` or ``"the default configuration"``.
    """
    if topic in consumed:
        return None
    close = closest_topic(topic, consumed)
    if close is not None:
        hint = f"did you mean {close}?"
    else:
        hint = f"the planes read {', '.join(sorted(consumed))}" if consumed else "no plane is enabled"
    return f"warning: no plane of {whose} reads topic {topic}, so its records will not be applied ({hint})"
