-- Identity stitching (docs/IDENTITY-RESOLUTION.md): identifiers -> normalized nodes -> co-occurrence edges
-- -> people with a stable universal_id. Everything here is derived from `events` and can be rebuilt.

-- Raw identifier exactly as it arrived -> its normalized form and node key; rejects keep their reason
-- (normalized = '', node_key = 0). Each distinct raw value is normalized once.
CREATE TABLE IF NOT EXISTS ${database}.identity_identifiers
(
    identifier_type LowCardinality(String),
    raw_value       String,
    normalized      String,
    node_key        UInt64,
    reason          String
)
ENGINE = ReplacingMergeTree
ORDER BY (identifier_type, raw_value);

-- Co-occurrence of two valid identifiers in one event, src < dst (node keys), aggregated over all events.
CREATE TABLE IF NOT EXISTS ${database}.identity_edges
(
    src             UInt64,
    dst             UInt64,
    first_seen      SimpleAggregateFunction(min, DateTime64(3, 'UTC')),
    last_seen       SimpleAggregateFunction(max, DateTime64(3, 'UTC')),
    events          SimpleAggregateFunction(sum, UInt64)
)
ENGINE = AggregatingMergeTree
ORDER BY (src, dst);

-- Every valid identifier seen in an event (also those that never co-occur with another one), aggregated.
-- first_ingested ranks identifiers for the universal_id survivor rule: it never moves backwards when a late
-- event arrives, unlike first_seen (occurred_at).
CREATE TABLE IF NOT EXISTS ${database}.identity_node_seen
(
    node_key        UInt64,
    identifier_type SimpleAggregateFunction(any, LowCardinality(String)),  -- fixed per node_key
    value           SimpleAggregateFunction(any, String),
    first_seen      SimpleAggregateFunction(min, DateTime64(3, 'UTC')),
    last_seen       SimpleAggregateFunction(max, DateTime64(3, 'UTC')),
    first_ingested  SimpleAggregateFunction(min, DateTime64(3, 'UTC')),
    events          SimpleAggregateFunction(sum, UInt64)
)
ENGINE = AggregatingMergeTree
ORDER BY node_key;

-- The identity graph: identifier -> universal_id (read with FINAL). cluster = smallest node_key of the
-- identifier's connected component before the over-merge guards; shared = blocked by the degree guard.
CREATE TABLE IF NOT EXISTS ${database}.identity_nodes
(
    node_key        UInt64,
    identifier_type LowCardinality(String),
    value           String,
    first_seen      DateTime64(3, 'UTC'),
    last_seen       DateTime64(3, 'UTC'),
    cluster         UInt64,
    shared          UInt8,
    universal_id    String,
    updated_at      DateTime64(6, 'UTC')
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY node_key;

-- old_id stopped being used because its person merged into new_id's (never a cycle, see graph.assign_ids).
CREATE TABLE IF NOT EXISTS ${database}.identity_merge_log
(
    old_id          String,
    new_id          String,
    run_id          String,
    merged_at       DateTime64(3, 'UTC')
)
ENGINE = MergeTree
ORDER BY (merged_at, old_id);

-- Over-merge audit, a change log: kind 'identifier' = a raw identifier rejected by normalization (src = dst
-- = 0); kind 'edge' = an edge between two node keys blocked by a guard, written when its verdict changes
-- (reason 'accepted' = no longer blocked). The latest row per (src, dst) is the current verdict.
CREATE TABLE IF NOT EXISTS ${database}.identity_blocked
(
    run_id          String,
    kind            Enum8('edge' = 1, 'identifier' = 2),
    src             UInt64,
    dst             UInt64,
    identifier_type LowCardinality(String),
    value           String,
    reason          String,
    at              DateTime64(6, 'UTC')
)
ENGINE = MergeTree
ORDER BY (kind, src, dst, at);

-- Incremental watermark: events of committed ingest ranges below end_offset are stitched.
CREATE TABLE IF NOT EXISTS ${database}.identity_progress
(
    kafka_topic     LowCardinality(String),
    kafka_partition UInt32,
    end_offset      UInt64,
    run_id          String,
    at              DateTime64(6, 'UTC')
)
ENGINE = MergeTree
ORDER BY (kafka_topic, kafka_partition, end_offset);

-- One row per person.
CREATE VIEW IF NOT EXISTS ${database}.identity_people AS
SELECT
    universal_id,
    arraySort(groupArrayIf(value, identifier_type = 'email')) AS emails,
    arraySort(groupArrayIf(value, identifier_type = 'klaviyo_id')) AS klaviyo_ids,
    arraySort(groupArrayIf(value, identifier_type = 'phone')) AS phones,
    arraySort(groupArrayIf(value, identifier_type = 'external_id')) AS external_ids,
    count() AS identifiers,
    min(first_seen) AS first_seen,
    max(last_seen) AS last_seen
FROM ${database}.identity_nodes FINAL
GROUP BY universal_id;
