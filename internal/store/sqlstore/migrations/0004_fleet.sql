-- 0004: the fleet. One row per node, rewritten by each heartbeat; leases
-- for the control plane's singleton loops; sandboxes found by node.
--
--   nodes.cap_*      what the node can hold (cpus, memory and disk bytes,
--                    sandbox slots)
--   nodes.alloc_*    what its sandboxes are allocated (their sizes)
--   nodes.templates  JSON list of built templates
--   nodes.warm       JSON map template -> warm sandboxes ready
--   nodes.network_enabled, nodes.disk_low   0 or 1
--   nodes.registered_at, nodes.heartbeat_at  by the database's clock
--   leases.expires_at  by the database's clock; a lease past it is free

CREATE TABLE nodes (
    id                  TEXT {{binary_collation}} PRIMARY KEY,
    region              TEXT NOT NULL,
    address             TEXT NOT NULL,
    version             TEXT NOT NULL,
    api_version         BIGINT NOT NULL,
    cap_cpus            DOUBLE PRECISION NOT NULL,
    cap_memory_bytes    BIGINT NOT NULL,
    cap_disk_bytes      BIGINT NOT NULL,
    cap_slots           BIGINT NOT NULL,
    alloc_cpus          DOUBLE PRECISION NOT NULL,
    alloc_memory_bytes  BIGINT NOT NULL,
    alloc_disk_bytes    BIGINT NOT NULL,
    alloc_slots         BIGINT NOT NULL,
    running             BIGINT NOT NULL,
    templates           TEXT NOT NULL,
    warm                TEXT NOT NULL,
    network_enabled     BIGINT NOT NULL,
    disk_low            BIGINT NOT NULL,
    registered_at       BIGINT NOT NULL,
    heartbeat_at        BIGINT NOT NULL
);

CREATE TABLE leases (
    name         TEXT {{binary_collation}} PRIMARY KEY,
    holder       TEXT NOT NULL,
    acquired_at  BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL
);

-- LoseNode, SandboxesOnNode, a node's reconcile.
CREATE INDEX sandboxes_node_status ON sandboxes (node, status);
