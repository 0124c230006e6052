"""``ctxplane runs``: the runs a store holds, with their full ContextPins, read from the store alone.

A query must present its run's pins (contracts: every read is scoped by them); a client that did
not write the events finds them here. One entry per distinct pins set the store recorded, with the
events of its run (``platform_run_id``, ``scenario_run_id``) per plane and their event-time range.
"""

from __future__ import annotations

from typing import Any

import orjson

from ctxplane.actors.tables.dedupe import events_by_run_program
from ctxplane.actors.tables.join import all_pins_program
from ctxplane.contracts.envelope import PIN_FIELDS
from ctxplane.runtime.store import Program

__all__ = ("render_runs", "runs_program")


def _ordered_pins(pins: dict[str, Any]) -> dict[str, Any]:
    """Pins in the order requests list them (the six, then run_id when the events carried one)."""
    ordered = {name: pins[name] for name in PIN_FIELDS if name in pins}
    if pins.get("run_id") is not None:
        ordered["run_id"] = pins["run_id"]
    return ordered


def runs_program() -> Program[list[dict[str, Any]]]:
    """The runs of the store, sorted by ``(platform_run_id, scenario_run_id, pins)``.

    Each entry: ``platform_run_id``, ``scenario_run_id``, ``pins`` (ready to send in a request),
    ``events`` (``{"join": n, "features": n}``, applied events of the run) and
    ``first_event_ts_utc`` / ``last_event_ts_utc`` (``None`` when no event of the run is recorded).
    """
    pins_rows = yield from all_pins_program()
    event_rows = yield from events_by_run_program()
    events: dict[tuple[str, str], dict[str, Any]] = {}
    for run, scenario, plane, count, first, last in event_rows:
        entry = events.setdefault((run, scenario), {"events": {"join": 0, "features": 0}, "first": None, "last": None})
        entry["events"][plane] = int(count)
        entry["first"] = first if entry["first"] is None else min(entry["first"], first)
        entry["last"] = last if entry["last"] is None else max(entry["last"], last)
    runs = []
    for run, scenario, pins_json in pins_rows:
        found = events.get((run, scenario), {"events": {"join": 0, "features": 0}, "first": None, "last": None})
        runs.append({
            "platform_run_id": run,
            "scenario_run_id": scenario,
            "pins": _ordered_pins(orjson.loads(pins_json)),
            "events": dict(found["events"]),
            "first_event_ts_utc": found["first"],
            "last_event_ts_utc": found["last"],
        })
    # Sorted here, not by ORDER BY: text collation differs between backends and locales.
    runs.sort(key=lambda r: (r["platform_run_id"], r["scenario_run_id"], orjson.dumps(r["pins"], option=orjson.OPT_SORT_KEYS)))
    return runs


def render_runs(runs: list[dict[str, Any]]) -> str:
    """One line per run: ids, event counts and time range, then the pins as one JSON object
    (copy it into a request's ``"pins"``)."""
    lines = []
    for run in runs:
        span = (f"{run['first_event_ts_utc']}..{run['last_event_ts_utc']}" if run["first_event_ts_utc"] else "-")
        events = run["events"]
        lines.append(
            f"{run['platform_run_id']}  scenario_run_id={run['scenario_run_id']}  "
            f"events join={events.get('join', 0)} features={events.get('features', 0)}  ts_utc={span}  "
            f"pins={orjson.dumps(run['pins']).decode()}"
        )
    return "\n".join(lines)
