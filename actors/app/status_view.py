"""Render a health answer as a table for people (``ctxplane status``)."""

from __future__ import annotations

from typing import Any

__all__ = ("render_status",)


def _table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    cells = [[("" if v is None else str(v)) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = lambda values: "  ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()  # noqa: E731
    return [line(headers), line(["-" * w for w in widths]), *(line(r) for r in cells)]


def render_status(answer: dict[str, Any]) -> str:
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
    actors = health.get("actors", [])
    if actors:
        out.append("")
        out += _table(["actor", "state", "mailbox", "restarts"],
                      [[a["name"], a["state"], f"{a['mailbox_depth']}/{a['mailbox_capacity']}", a["restarts"]] for a in actors])
    return "\n".join(out)
