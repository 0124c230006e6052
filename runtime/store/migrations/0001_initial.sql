-- ctxplane schema v1: join plane, feature plane, intake dedupe, apply-failure ledger, checkpoints.
-- Portable SQL for SQLite and PostgreSQL; {without_rowid} is rendered per dialect.
-- Every projection row carries its run keys (platform_run_id, scenario_run_id) in its primary key,
-- so rows of two runs can never collide or be read for each other.

CREATE TABLE context_pins (
    pins_id TEXT NOT NULL PRIMARY KEY,
    platform_run_id TEXT NOT NULL,
    scenario_run_id TEXT NOT NULL,
    pins_json TEXT NOT NULL
);

CREATE TABLE intake_dedupe (
    platform_run_id TEXT NOT NULL,
    event_class TEXT NOT NULL,
    event_id TEXT NOT NULL,
    payload_hash TEXT NOT NULL,
    scenario_run_id TEXT NOT NULL,
    plane TEXT NOT NULL,
    topic TEXT NOT NULL,
    partition_id INTEGER NOT NULL,
    source_offset TEXT NOT NULL,
    offset_kind TEXT NOT NULL,
    ts_utc TEXT NOT NULL,
    PRIMARY KEY (platform_run_id, event_class, event_id)
) {without_rowid};

-- One row per (frame key, role, event): the frame is the set of its role rows, so the merge is a
-- commutative insert and two events for one role (a conflict) are both kept, whatever the order.
CREATE TABLE join_frame_roles (
    platform_run_id TEXT NOT NULL,
    scenario_run_id TEXT NOT NULL,
    merchant_id TEXT NOT NULL,
    arrival_seq BIGINT NOT NULL,
    role TEXT NOT NULL,
    event_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    payload_hash TEXT NOT NULL,
    payload_json TEXT NOT NULL,
    pins_id TEXT NOT NULL REFERENCES context_pins (pins_id),
    ts_utc TEXT NOT NULL,
    topic TEXT NOT NULL,
    partition_id INTEGER NOT NULL,
    source_offset TEXT NOT NULL,
    offset_kind TEXT NOT NULL,
    PRIMARY KEY (platform_run_id, scenario_run_id, merchant_id, arrival_seq, role, event_id)
) {without_rowid};

-- One row per anchor claim flow_id -> frame key; a flow with two keys, or a key with two flows,
-- is a FLOW_BINDING_CONFLICT derived from these rows (order-independent).
CREATE TABLE flow_binding_claims (
    platform_run_id TEXT NOT NULL,
    scenario_run_id TEXT NOT NULL,
    flow_id TEXT NOT NULL,
    merchant_id TEXT NOT NULL,
    arrival_seq BIGINT NOT NULL,
    event_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    payload_hash TEXT NOT NULL,
    pins_id TEXT NOT NULL REFERENCES context_pins (pins_id),
    ts_utc TEXT NOT NULL,
    topic TEXT NOT NULL,
    partition_id INTEGER NOT NULL,
    source_offset TEXT NOT NULL,
    offset_kind TEXT NOT NULL,
    -- flow_id leads: a lookup by frame key must not be tempted by a (run, scenario) prefix scan.
    PRIMARY KEY (flow_id, platform_run_id, scenario_run_id, merchant_id, arrival_seq, event_id)
) {without_rowid};

CREATE INDEX flow_binding_claims_by_key
    ON flow_binding_claims (merchant_id, arrival_seq, platform_run_id, scenario_run_id);

-- Raw traffic events per feature key (exact window edges) and hierarchical tiles (cheap windows).
CREATE TABLE feature_raw (
    platform_run_id TEXT NOT NULL,
    scenario_run_id TEXT NOT NULL,
    key_type TEXT NOT NULL,
    key_id TEXT NOT NULL,
    ts_us BIGINT NOT NULL,
    event_id TEXT NOT NULL,
    amount_units BIGINT,
    PRIMARY KEY (platform_run_id, scenario_run_id, key_type, key_id, ts_us, event_id)
) {without_rowid};

CREATE TABLE feature_tiles (
    platform_run_id TEXT NOT NULL,
    scenario_run_id TEXT NOT NULL,
    key_type TEXT NOT NULL,
    key_id TEXT NOT NULL,
    level_s INTEGER NOT NULL,
    tile_id BIGINT NOT NULL,
    event_count BIGINT NOT NULL,
    amount_count BIGINT NOT NULL,
    amount_sum BIGINT NOT NULL,
    amount_min BIGINT,
    amount_max BIGINT,
    last_ts_us BIGINT,
    PRIMARY KEY (platform_run_id, scenario_run_id, key_type, key_id, level_s, tile_id)
) {without_rowid};

CREATE TABLE apply_failures (
    failure_id TEXT NOT NULL PRIMARY KEY,
    plane TEXT NOT NULL,
    platform_run_id TEXT,
    scenario_run_id TEXT,
    topic TEXT NOT NULL,
    partition_id INTEGER NOT NULL,
    source_offset TEXT NOT NULL,
    offset_kind TEXT NOT NULL,
    event_id TEXT,
    event_type TEXT,
    reason_code TEXT NOT NULL,
    details_json TEXT NOT NULL,
    recorded_at_utc TEXT NOT NULL
);

CREATE INDEX apply_failures_by_reason ON apply_failures (reason_code, recorded_at_utc);

-- Exclusive-next position per consumed partition; forward only (except an explicit operator rewind).
CREATE TABLE checkpoints (
    scope TEXT NOT NULL,
    topic TEXT NOT NULL,
    partition_id INTEGER NOT NULL,
    plane TEXT NOT NULL,
    next_offset TEXT NOT NULL,
    offset_kind TEXT NOT NULL,
    watermark_ts_utc TEXT,
    updated_at_utc TEXT NOT NULL,
    PRIMARY KEY (scope, topic, partition_id)
);

-- Monotone intake counters (duplicates, ignored outputs, ...) per partition: they explain
-- re-deliveries in drills. Not part of the semantic digest.
CREATE TABLE intake_counters (
    scope TEXT NOT NULL,
    topic TEXT NOT NULL,
    partition_id INTEGER NOT NULL,
    name TEXT NOT NULL,
    value BIGINT NOT NULL,
    PRIMARY KEY (scope, topic, partition_id, name)
);

CREATE TABLE store_meta (
    meta_key TEXT NOT NULL PRIMARY KEY,
    meta_value TEXT NOT NULL
);
