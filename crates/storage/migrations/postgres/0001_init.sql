-- The whole schema for Postgres, equal to the SQLite migrations 0001-0005 taken together; the
-- same portable queries run on both. Integers are BIGINT because the queries read every
-- integer as a 64-bit value; flags are 0/1 integers as in SQLite. Times are unix milliseconds.
CREATE TABLE jobs (
    id               TEXT PRIMARY KEY,
    key_id           TEXT,
    model            TEXT NOT NULL,
    images           BIGINT NOT NULL,
    status           TEXT NOT NULL,
    spec             TEXT NOT NULL,
    request_id       TEXT NOT NULL,
    created_at       BIGINT NOT NULL,
    started_at       BIGINT,
    finished_at      BIGINT,
    attempts         BIGINT NOT NULL DEFAULT 0,
    node             TEXT,
    lease_until      BIGINT,
    cancel_requested BIGINT NOT NULL DEFAULT 0,
    progress         TEXT,
    error_code       TEXT,
    error_message    TEXT,
    lane             TEXT NOT NULL DEFAULT 'local',
    told_position    BIGINT,
    ran_on           TEXT
);
CREATE INDEX jobs_by_status ON jobs (status, created_at, id);
CREATE INDEX jobs_by_key ON jobs (key_id, created_at);
CREATE INDEX jobs_lane_queue ON jobs (lane, status, created_at, id);

CREATE TABLE job_events (
    job_id     TEXT NOT NULL,
    seq        BIGINT NOT NULL,
    event      TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (job_id, seq)
);

CREATE TABLE images (
    job_id     TEXT NOT NULL,
    idx        BIGINT NOT NULL,
    blob_key   TEXT NOT NULL,
    width      BIGINT NOT NULL,
    height     BIGINT NOT NULL,
    format     TEXT NOT NULL,
    bytes      BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (job_id, idx)
);
CREATE INDEX images_by_expiry ON images (expires_at);

CREATE TABLE api_keys (
    id                TEXT PRIMARY KEY,
    name              TEXT NOT NULL,
    secret_hash       BYTEA NOT NULL UNIQUE,
    scopes            TEXT NOT NULL,
    images_per_minute BIGINT,
    quota_images      BIGINT,
    bootstrap         BIGINT NOT NULL DEFAULT 0,
    created_at        BIGINT NOT NULL,
    revoked_at        BIGINT,
    hash_kind         TEXT NOT NULL DEFAULT 'sha256'
);

CREATE TABLE usage (
    job_id     TEXT PRIMARY KEY,
    key_id     TEXT,
    model      TEXT NOT NULL,
    images     BIGINT NOT NULL,
    tokens     BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX usage_by_key ON usage (key_id, created_at);

CREATE TABLE settings (
    name  TEXT PRIMARY KEY,
    value BYTEA NOT NULL
);
