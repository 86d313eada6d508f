-- Event ids by the UTC hour their event occurred (docs/INGESTION.md, "Duplicates"). The duplicate check
-- (sql/ingest/known_ids.sql) read every id ever ingested once per attempt, even as an 8-byte hash (0018): random ids
-- leave a table sorted by id nothing to skip, so a daily run's cost grew with the whole history. Sorted by
-- (hour, id hash), the check reads only granules of the hours the attempt's events occurred in, and of those only
-- the hour and the hash: what it costs follows the traffic of those hours, not the history. An event is now its id
-- in its hour: every connector's redelivery carries the first copy's occurred_at, and an id sent again with an
-- occurred_at in another hour is a second event (the no_reused_event_ids check reports such reuse).
-- Rerunnable from any statement that failed: the first drops what a failed run left (after the exchange, that is
-- the old table, whose rows the copy does not need).
DROP TABLE IF EXISTS ${database}.event_ids_next;
CREATE TABLE IF NOT EXISTS ${database}.event_ids_next
(
    occurred_hour   DateTime('UTC'),
    event_id        String,
    id_hash         UInt64 MATERIALIZED cityHash64(event_id),
    kafka_topic     LowCardinality(String),
    kafka_partition UInt32,
    kafka_offset    UInt64
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(occurred_hour)
ORDER BY (occurred_hour, id_hash)
SETTINGS non_replicated_deduplication_window = 10000;
-- Copied from events, not joined to it: each attempt writes event_ids and events from one SELECT
-- (sql/ingest/new_events.sql), so events holds every id of event_ids with the same Kafka coordinates and its hour,
-- read here as a stream. Not carried over: ids whose events the events TTL dropped, and those of an attempt that
-- crashed between its two inserts (its replay writes them again). On a cluster this runs on the migrator's replica
-- and reaches the others by replication.
INSERT INTO ${database}.event_ids_next (occurred_hour, event_id, kafka_topic, kafka_partition, kafka_offset)
SELECT toStartOfHour(occurred_at), event_id, kafka_topic, kafka_partition, kafka_offset FROM ${database}.events;
EXCHANGE TABLES ${database}.event_ids_next AND ${database}.event_ids;
DROP TABLE ${database}.event_ids_next;
-- The attempt's known ids carry their hour too: the inserts exclude the pair, not the id alone.
ALTER TABLE ${database}.ingest_known_ids ADD COLUMN IF NOT EXISTS occurred_hour DateTime('UTC');
