-- ctxplane schema v3: partition leases for scale-out (architecture.md §Scale-out; actors/_leases.py).
-- Portable SQL; leases are only used with PostgreSQL (SQLite deployments are single-process).
-- Not part of the semantic state digest: who read a partition is not what the events mean.
--
-- One row per (scope, topic, partition) ever leased. Rows are never deleted: ``epoch`` must grow
-- for ever, because every ownership change (take, steal, take-over after expiry, release) bumps it
-- and every commit is fenced on the epoch its batch was read under — a deleted row would restart
-- the count and could let a stale batch through. ``owner`` is '' for a released lease.
-- ``expires_at_utc`` is RFC 3339 UTC with 6 fractional digits (lexicographic = chronological),
-- computed from the database server's clock, never from a process's.
CREATE TABLE partition_leases (
    scope TEXT NOT NULL,
    topic TEXT NOT NULL,
    partition_id INTEGER NOT NULL,
    owner TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    expires_at_utc TEXT NOT NULL,
    PRIMARY KEY (scope, topic, partition_id)
);
