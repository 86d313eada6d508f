-- The identity run's scratch holds distinct identifiers and pairs instead of one row per (event, identifier)
-- (docs/SCALING.md, "What breaks first"). Grouping those rows by event to pair them held one hash-table entry
-- per event of the run (5.1 GB in the endpoint at 10M events) and joining them to node keys cost more than the
-- scan; per distinct identifier and pair both are the size of the graph, whatever the events per person.
-- Scratch only (truncated at the start of every run), so the old tables are dropped, not migrated.
DROP TABLE IF EXISTS ${database}.identity_run_identifiers;
DROP TABLE IF EXISTS ${database}.identity_run_nodes;

-- The run's new events in one aggregation: one row per distinct non-empty identifier (other_type = ''), one per
-- distinct pair of identifiers carried by one event (the other one in other_type/other_value, in the events'
-- column order), and one row with identifier_type = '' whose `events` counts the events carrying any identifier.
-- `events` = how many new events carried the identifier, or both of the pair.
CREATE TABLE IF NOT EXISTS ${database}.identity_run_identifiers
(
    identifier_type LowCardinality(String),
    raw_value       String,
    other_type      LowCardinality(String),
    other_value     String,
    first_seen      DateTime64(3, 'UTC'),
    last_seen       DateTime64(3, 'UTC'),
    first_ingested  DateTime64(3, 'UTC'),
    events          UInt64
)
ENGINE = MergeTree
ORDER BY (identifier_type, raw_value, other_type, other_value);

-- The run's distinct valid identifiers resolved to node keys, with their times (rejects drop out).
CREATE TABLE IF NOT EXISTS ${database}.identity_run_nodes
(
    identifier_type LowCardinality(String),
    raw_value       String,
    node_key        UInt64,
    normalized      String,
    first_seen      DateTime64(3, 'UTC'),
    last_seen       DateTime64(3, 'UTC'),
    first_ingested  DateTime64(3, 'UTC'),
    events          UInt64
)
ENGINE = MergeTree
ORDER BY (identifier_type, raw_value);
