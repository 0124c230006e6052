-- ctxplane schema v2: the replay register and the checkpoint-rewind audit trail (contracts.md §5).
-- Portable SQL for SQLite and PostgreSQL. Neither table is part of the semantic state digest: they
-- record what an operator did, not what the events mean.

-- One row per replay manifest (replay_id = first 32 hex of the SHA-256 of the canonical manifest);
-- replaying the same manifest again overwrites its row with the latest run's figures and basis.
CREATE TABLE replays (
    replay_id TEXT NOT NULL PRIMARY KEY,
    manifest_json TEXT NOT NULL,
    started_at_utc TEXT NOT NULL,
    finished_at_utc TEXT NOT NULL,
    events BIGINT NOT NULL,
    applied BIGINT NOT NULL,
    duplicates BIGINT NOT NULL,
    basis_json TEXT NOT NULL,
    basis_digest TEXT NOT NULL
);

-- Append-only: every explicit operator rewind (`ctxplane checkpoint rewind`), the only way a
-- checkpoint ever moves backward.
CREATE TABLE checkpoint_rewinds (
    rewound_at_utc TEXT NOT NULL,
    scope TEXT NOT NULL,
    topic TEXT NOT NULL,
    partition_id INTEGER NOT NULL,
    from_offset TEXT NOT NULL,
    to_offset TEXT NOT NULL
);

CREATE INDEX checkpoint_rewinds_by_partition ON checkpoint_rewinds (scope, topic, partition_id, rewound_at_utc);
