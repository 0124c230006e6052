"""Render a health answer as a table for people (``ctxplane status``)."""

from __future__ import annotations

from typing import Any

__all__ = ("render_offline_status", "render_status", "table")


def table(headers: list[str], rows: list[list[Any]]) -> list[str]:
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
    out += table(
        ["plane", "topic", "partition", "next_offset", "end", "lag", "watermark_ts_utc", "commit_age_s"],
        [[p.get("plane"), p.get("topic"), p.get("partition"), p.get("next_offset"), p.get("end"), p.get("lag"),
          p.get("watermark_ts_utc"), p.get("last_commit_age_s")] for p in parts],
    )
    out += _unread_lines(unread_topics)
    actors = health.get("actors", [])
    if actors:
        out.append("")
        out += table(["actor", "state", "mailbox", "restarts"],
                      [[a["name"], a["state"], f"{a['mailbox_depth']}/{a['mailbox_capacity']}", a["restarts"]] for a in actors])
    return "\n".join(out)


def _unread_lines(unread_topics: list[dict[str, Any]] | None) -> list[str]:
    if not unread_topics:
        return []
    out = ["", "topics on the bus that no plane reads (their records are never applied):"]
    for topic in unread_topics:
        hint = f"; did you mean {topic['did_you_mean']}?" if topic.get("did_you_mean") else ""
        out.append(f"  {topic['topic']} ({topic['partitions']} partitions{hint})")
    return out


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {n}" for name, n in counts.items()) or "none"


def render_offline_status(report: dict[str, Any], *, unread_topics: list[dict[str, Any]] | None = None) -> str:
    """The ``status --offline`` report as text: positions and lag per partition, then the ledger."""
    process = report["process"]
    running = f"running ({process['detail']})" if process["running"] else "not running"
    out = [
        f"offline status: from the store ({report['store']}) and the bus ({report['bus']}), scope {report['scope']}"
        f", at {report['checked_at_utc']}",
        f"process: {running}",
        "",
    ]
    parts = report["partitions"]
    kinesis = any(p.get("behind_ms") is not None for p in parts)
    headers = ["plane", "topic", "partition", "next_offset", "end", "lag"]
    headers += ["behind_ms", "unread"] if kinesis else []
    headers += ["watermark_ts_utc", "checkpoint_at_utc"]
    rows = []
    for p in parts:
        row = [p["plane"], p["topic"], p["partition"], p["next_offset"] if p["next_offset"] is not None else "-",
               p["end"] if p["end"] is not None else "?", p["lag"] if p["lag"] is not None else "?"]
        row += [p.get("behind_ms"), {True: "yes", False: "no"}.get(p.get("unread"), "?")] if kinesis else []
        row += [p["watermark_ts_utc"], p.get("error") or p["checkpoint_at_utc"]]
        rows.append(row)
    out += table(headers, rows)
    totals = report["totals"]
    lag = totals["lag"] if totals["lag"] is not None else "unknown (the bus does not count records)"
    out.append("")
    out.append(f"total lag: {lag}; {totals['unread_partitions']} of {totals['partitions']} partitions have unread records"
               + (f"; {totals['without_checkpoint']} without a checkpoint" if totals["without_checkpoint"] else ""))
    ledger = report["ledger"]
    last = f", last recorded {ledger['last_recorded_at_utc']}" if ledger["last_recorded_at_utc"] else ""
    out.append(f"ledger: {ledger['rows']} rows ({_counts(ledger['anomaly_counts'])}){last}")
    out.append(f"intake counters: {_counts(report['intake_counters'])}")
    moves = report.get("checkpoint_moves") or []
    if moves:
        out.append("latest checkpoint moves (checkpoint_rewinds):")
        for m in moves:
            who = f" by {m['operator']}" if m.get("operator") else ""
            why = f": {m['reason']}" if m.get("reason") else ""
            skipped = f", skipped {m['skipped']}" if m.get("skipped") else ""
            out.append(f"  {m['at_utc']} {m.get('command') or 'rewind'} {m['topic']} partition {m['partition']} "
                       f"{m['from_offset']} -> {m['to_offset']}{skipped}{who}{why}")
    out += _unread_lines(unread_topics)
    return "\n".join(out)
