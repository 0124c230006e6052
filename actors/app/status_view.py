"""Render a health answer as a table for people (``ctxplane status``)."""

from __future__ import annotations

from typing import Any

__all__ = ("render_status",)


def _table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    cells = [[("" if v is None else str(v)) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]

    def line(values: list[str]) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()

    return [line(headers), line(["-" * w for w in widths]), *(line(r) for r in cells)]


def render_status(answer: dict[str, Any], *, unread_topics: list[dict[str, Any]] | None = None) -> str:
    """The health answer as text; ``unread_topics`` (topics on the bus no plane reads) are listed
    after the partitions, with the consumed topic each is closest to."""
    health = answer.get("health", {})
    reasons = ", ".join(health.get("reasons", [])) or "-"
    out = [f"health: {health.get('state', '?')}   reasons: {reasons}"]
    if health.get("counted_since_utc"):
        window = health.get("policy", {}).get("window_s")
        line = f"counted since: {health['counted_since_utc']}"
        if window is not None:
            line += f" (window {window:g} s"
            ack = health.get("acknowledged")
            line += f"; acknowledged by {ack['by']} at {ack['acked_at_utc']}: {ack['reason']})" if ack else ")"
        out.append(line)
    out.append("")
    parts = health.get("partitions", [])
    out += _table(
        ["plane", "topic", "partition", "next_offset", "end", "lag", "watermark_ts_utc", "commit_age_s"],
        [[p.get("plane"), p.get("topic"), p.get("partition"), p.get("next_offset"), p.get("end"), p.get("lag"),
          p.get("watermark_ts_utc"), p.get("last_commit_age_s")] for p in parts],
    )
    if unread_topics:
        out.append("")
        out.append("topics on the bus that no plane reads (their records are never applied):")
        for topic in unread_topics:
            hint = f"; did you mean {topic['did_you_mean']}?" if topic.get("did_you_mean") else ""
            out.append(f"  {topic['topic']} ({topic['partitions']} partitions{hint})")
    actors = health.get("actors", [])
    if actors:
        out.append("")
        out += _table(["actor", "state", "mailbox", "restarts"],
                      [[a["name"], a["state"], f"{a['mailbox_depth']}/{a['mailbox_capacity']}", a["restarts"]] for a in actors])
    return "\n".join(out)
