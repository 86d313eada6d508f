-- Incremental identity runs (docs/IDENTITY-RESOLUTION.md): scratch tables of the running identity run and a
-- run log with the graph's running totals. One identity writer at a time (the identity lease), so the scratch
-- tables are simply truncated at the start of every run.

-- Identifiers of the run's new events, one row per (event, identifier type): the only scan of `events`.
CREATE TABLE IF NOT EXISTS ${database}.identity_run_identifiers
(
    kafka_topic     LowCardinality(String),
    kafka_partition UInt32,
    kafka_offset    UInt64,
    occurred_at     DateTime64(3, 'UTC'),
    ingested_at     DateTime64(3, 'UTC'),
    identifier_type LowCardinality(String),
    raw_value       String
)
ENGINE = MergeTree
ORDER BY (identifier_type, raw_value);

-- The same rows resolved to node keys (valid identifiers only).
CREATE TABLE IF NOT EXISTS ${database}.identity_run_nodes
(
    kafka_topic     LowCardinality(String),
    kafka_partition UInt32,
    kafka_offset    UInt64,
    occurred_at     DateTime64(3, 'UTC'),
    ingested_at     DateTime64(3, 'UTC'),
    node_key        UInt64,
    identifier_type LowCardinality(String),
    normalized      String
)
ENGINE = MergeTree
ORDER BY (kafka_topic, kafka_partition, kafka_offset);

-- Co-occurrence pairs of the run's events, before they are added to identity_edges.
CREATE TABLE IF NOT EXISTS ${database}.identity_run_edges
(
    src             UInt64,
    dst             UInt64,
    first_seen      DateTime64(3, 'UTC'),
    last_seen       DateTime64(3, 'UTC'),
    events          UInt64
)
ENGINE = MergeTree
ORDER BY (src, dst);

-- The region the run recomputes: whole pre-guard clusters touched by the new events (boundary = 0) and the
-- other endpoints of their edges (boundary = 1). A key may appear several times; boundary = min over its rows.
CREATE TABLE IF NOT EXISTS ${database}.identity_region
(
    node_key        UInt64,
    boundary        UInt8
)
ENGINE = MergeTree
ORDER BY node_key;

-- One row per finished identity run: what it did and the whole graph's totals after it. Incremental runs
-- update the totals from the region alone (a person never straddles the region's border).
CREATE TABLE IF NOT EXISTS ${database}.identity_runs
(
    run_id          String,
    finished_at     DateTime64(6, 'UTC'),
    full_rebuild    UInt8,
    new_events      UInt64,
    region_nodes    UInt64,
    region_edges    UInt64,
    nodes_written   UInt64,
    merges          UInt64,
    nodes_total     UInt64,
    people_total    UInt64,
    edges_total     UInt64,
    edges_blocked   Map(String, UInt64),
    largest_person  UInt64,
    seconds         Float64
)
ENGINE = MergeTree
ORDER BY finished_at;
