-- Jobs are written before any work starts and carry everything needed to run them again
-- after a restart. Times are unix milliseconds.
CREATE TABLE jobs (
    id               TEXT PRIMARY KEY,
    key_id           TEXT,
    model            TEXT NOT NULL,
    images           INTEGER NOT NULL,
    status           TEXT NOT NULL,
    spec             TEXT NOT NULL,
    request_id       TEXT NOT NULL,
    created_at       INTEGER NOT NULL,
    started_at       INTEGER,
    finished_at      INTEGER,
    attempts         INTEGER NOT NULL DEFAULT 0,
    node             TEXT,
    lease_until      INTEGER,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    progress         TEXT,
    error_code       TEXT,
    error_message    TEXT
);
CREATE INDEX jobs_by_status ON jobs (status, created_at, id);
CREATE INDEX jobs_by_key ON jobs (key_id, created_at);

-- Everything that happened to a job, in order; streams resume from a sequence number.
CREATE TABLE job_events (
    job_id     TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    event      TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (job_id, seq)
);

-- One row per stored output image; the bytes live in the blob store under blob_key.
CREATE TABLE images (
    job_id     TEXT NOT NULL,
    idx        INTEGER NOT NULL,
    blob_key   TEXT NOT NULL,
    width      INTEGER NOT NULL,
    height     INTEGER NOT NULL,
    format     TEXT NOT NULL,
    bytes      INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (job_id, idx)
);
CREATE INDEX images_by_expiry ON images (expires_at);

-- API keys: only a SHA-256 of the secret is kept.
CREATE TABLE api_keys (
    id                TEXT PRIMARY KEY,
    name              TEXT NOT NULL,
    secret_hash       BLOB NOT NULL UNIQUE,
    scopes            TEXT NOT NULL,
    images_per_minute INTEGER,
    quota_images      INTEGER,
    bootstrap         INTEGER NOT NULL DEFAULT 0,
    created_at        INTEGER NOT NULL,
    revoked_at        INTEGER
);

-- What each finished job delivered, the basis of billing.
CREATE TABLE usage (
    job_id     TEXT PRIMARY KEY,
    key_id     TEXT,
    model      TEXT NOT NULL,
    images     INTEGER NOT NULL,
    tokens     INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX usage_by_key ON usage (key_id, created_at);

-- Server-wide values that must survive restarts (the link-signing secret).
CREATE TABLE settings (
    name  TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
