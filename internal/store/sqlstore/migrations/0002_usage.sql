-- 0002: metering. One row per sandbox and UTC hour, grown by adding the
-- deltas each flush measured (never rewritten), so any sum over hours,
-- days or months is exact integer arithmetic.
--
--   mem_mb_seconds   the size's memory (MB) for every second it ran
--   cpu_ms           CPU time its cgroup used, in milliseconds
--   running_seconds  seconds it ran

CREATE TABLE usage_hourly (
    sandbox_id       TEXT {{binary_collation}} NOT NULL REFERENCES sandboxes (id),
    account_id       TEXT {{binary_collation}} NOT NULL REFERENCES accounts (id),
    hour_start       BIGINT NOT NULL,
    mem_mb_seconds   BIGINT NOT NULL,
    cpu_ms           BIGINT NOT NULL,
    running_seconds  BIGINT NOT NULL,
    PRIMARY KEY (sandbox_id, hour_start)
);

-- Monthly limits and usage reports: an account's hours in a range.
CREATE INDEX usage_hourly_account_hour ON usage_hourly (account_id, hour_start);
