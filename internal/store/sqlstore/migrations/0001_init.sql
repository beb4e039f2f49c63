-- 0001: accounts, API keys and sandboxes.
--
-- One schema for SQLite and PostgreSQL. Rules for every migration file:
--   * portable types only: TEXT, INTEGER, BIGINT, DOUBLE PRECISION;
--   * times are BIGINT unix milliseconds (UTC), NULL where optional;
--   * lists and maps are JSON text;
--   * statements are separated by ';' at the end of a line; no ';' inside
--     literals or comments; comments are whole lines starting with '--';
--   * {{binary_collation}} becomes COLLATE "C" on PostgreSQL and
--     COLLATE BINARY on SQLite, so ids sort bytewise on both (list cursors).

CREATE TABLE accounts (
    id          TEXT {{binary_collation}} PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    plan        TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE api_keys (
    id            TEXT {{binary_collation}} PRIMARY KEY,
    account_id    TEXT {{binary_collation}} NOT NULL REFERENCES accounts (id),
    prefix        TEXT NOT NULL,
    hash          TEXT NOT NULL UNIQUE,
    scopes        TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT,
    revoked_at    BIGINT,
    last_used_at  BIGINT
);

CREATE INDEX api_keys_account ON api_keys (account_id, created_at, id);

CREATE INDEX api_keys_account_prefix ON api_keys (account_id, prefix);

CREATE TABLE sandboxes (
    id               TEXT {{binary_collation}} PRIMARY KEY,
    account_id       TEXT {{binary_collation}} NOT NULL REFERENCES accounts (id),
    status           TEXT NOT NULL,
    template         TEXT NOT NULL,
    size             TEXT NOT NULL,
    cpu              DOUBLE PRECISION NOT NULL,
    memory_mb        BIGINT NOT NULL,
    network          TEXT NOT NULL,
    region           TEXT NOT NULL,
    timeout_seconds  BIGINT NOT NULL,
    expires_at       BIGINT,
    remaining_ms     BIGINT NOT NULL,
    env_keys         TEXT NOT NULL,
    metadata         TEXT NOT NULL,
    node             TEXT NOT NULL,
    runtime_id       TEXT NOT NULL,
    snapshot_dir     TEXT NOT NULL,
    snapshot_bytes   BIGINT NOT NULL,
    error_message    TEXT NOT NULL,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    paused_at        BIGINT,
    terminated_at    BIGINT,
    version          BIGINT NOT NULL
);

-- Listing, newest first, and the cursor: (created_at, id) descending.
CREATE INDEX sandboxes_account_created ON sandboxes (account_id, created_at, id);

-- Status-filtered lists and the limit counts (active, paused).
CREATE INDEX sandboxes_account_status ON sandboxes (account_id, status, created_at, id);

-- SandboxesByStatus (reconciliation, deadline sweeper).
CREATE INDEX sandboxes_status ON sandboxes (status);
