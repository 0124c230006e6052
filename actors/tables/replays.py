"""Table family ``replays``: one row per replay manifest run (its id, manifest, counts and the basis it left)."""

from __future__ import annotations

from ctxplane.runtime.store import Execute

__all__ = ("record_replay",)

_RECORD = (
    "INSERT INTO replays (replay_id, manifest_json, started_at_utc, finished_at_utc, events, applied, duplicates,"
    " basis_json, basis_digest) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (replay_id) DO UPDATE SET"
    " manifest_json = excluded.manifest_json, started_at_utc = excluded.started_at_utc,"
    " finished_at_utc = excluded.finished_at_utc, events = excluded.events, applied = excluded.applied,"
    " duplicates = excluded.duplicates, basis_json = excluded.basis_json, basis_digest = excluded.basis_digest"
)


def record_replay(
    replay_id: str, *, manifest_json: str, started_at: str, finished_at: str, events: int, applied: int,
    duplicates: int, basis_json: str, basis_digest: str,
) -> Execute:
    """Record a replay; replaying the same manifest again (the same id) overwrites its row."""
    return Execute(_RECORD, (replay_id, manifest_json, started_at, finished_at, events, applied, duplicates,
                             basis_json, basis_digest))
