-- 0003: the web console. Members of an account sign in with email and
-- password; sessions and one-time links (password setup, invitations)
-- are stored by SHA-256 hash only, like API keys.
--
--   members.password_hash   argon2id in PHC form; '' until set
--   members.failed_logins   consecutive failures since the last success
--   members.locked_until    sign-in refused before this time (unix ms)

CREATE TABLE members (
    id             TEXT {{binary_collation}} PRIMARY KEY,
    account_id     TEXT {{binary_collation}} NOT NULL REFERENCES accounts (id),
    email          TEXT NOT NULL UNIQUE,
    password_hash  TEXT NOT NULL,
    failed_logins  BIGINT NOT NULL,
    locked_until   BIGINT,
    last_login_at  BIGINT,
    created_at     BIGINT NOT NULL
);

CREATE INDEX members_account ON members (account_id, created_at, id);

CREATE TABLE console_sessions (
    hash        TEXT {{binary_collation}} PRIMARY KEY,
    member_id   TEXT {{binary_collation}} NOT NULL REFERENCES members (id),
    account_id  TEXT {{binary_collation}} NOT NULL REFERENCES accounts (id),
    csrf_token  TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL
);

CREATE INDEX console_sessions_member ON console_sessions (member_id);

CREATE TABLE member_links (
    hash        TEXT {{binary_collation}} PRIMARY KEY,
    member_id   TEXT {{binary_collation}} NOT NULL REFERENCES members (id),
    purpose     TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    used_at     BIGINT
);

CREATE INDEX member_links_member ON member_links (member_id);
