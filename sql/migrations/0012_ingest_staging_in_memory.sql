-- Staging in memory (docs/INGESTION.md, "Staging"). An attempt's staged rows live for seconds and are read a
-- few times by the same engine; writing them as MergeTree parts (sorted, one file per column) and reading
-- them back cost about 1 s of engine CPU per million events (alternated lab runs of the bench/ingest.py
-- workload: staging 5.2 -> 4.5 s, the events insert 2.6 -> 2.3 s). Nothing is lost with them: staging is
-- rebuilt from Kafka whenever an attempt is replayed, so an endpoint restart only costs that replay.
-- Same columns and DEFAULT/EPHEMERAL validation as 0003; the two fast-path views of 0008 are re-pointed.
DROP VIEW IF EXISTS ${database}.ingest_fast;
DROP VIEW IF EXISTS ${database}.ingest_slow;
CREATE TABLE IF NOT EXISTS ${database}.ingest_staging_in_memory AS ${database}.ingest_staging ENGINE = Memory;
DROP TABLE ${database}.ingest_staging;
RENAME TABLE ${database}.ingest_staging_in_memory TO ${database}.ingest_staging;

CREATE MATERIALIZED VIEW IF NOT EXISTS ${database}.ingest_fast TO ${database}.ingest_staging AS
SELECT attempt_id, kafka_topic, kafka_partition, kafka_offset, raw_size, event_id, event_type, occurred_at, email,
       klaviyo_id, phone, external_id, esp, message_id, campaign_id, user_agent, ip, url, bounce_type, machine_open,
       bot_click, '' AS reason, '' AS payload
FROM ${database}.ingest_certified
WHERE certified;

CREATE MATERIALIZED VIEW IF NOT EXISTS ${database}.ingest_slow TO ${database}.ingest_staging AS
SELECT attempt_id, kafka_topic, kafka_partition, kafka_offset, raw
FROM ${database}.ingest_certified
WHERE NOT certified;
