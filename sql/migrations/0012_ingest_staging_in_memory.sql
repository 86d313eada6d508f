-- Staging in memory (docs/INGESTION.md, "Staging"). An attempt's staged rows live for seconds and are read a
-- few times by the same engine; writing them as MergeTree parts (sorted, one file per column) and reading
-- them back cost about 1 s of engine CPU per million events (alternated lab runs of the bench/ingest.py
-- workload: staging 5.2 -> 4.5 s, the events insert 2.6 -> 2.3 s). Nothing is lost with them: staging is
-- rebuilt from Kafka whenever an attempt is replayed, so an endpoint restart only costs that replay.
-- Same columns and DEFAULT/EPHEMERAL validation as 0003. The fast-path views of 0008 write to their target by
-- name, so after the exchange they stage into the Memory table as they are.
CREATE TABLE IF NOT EXISTS ${database}.ingest_staging_in_memory AS ${database}.ingest_staging ENGINE = Memory;
EXCHANGE TABLES ${database}.ingest_staging_in_memory AND ${database}.ingest_staging;
DROP TABLE ${database}.ingest_staging_in_memory;
