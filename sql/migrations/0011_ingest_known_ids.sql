-- Event ids of an attempt that ranges outside it already ingested (docs/INGESTION.md, "Duplicates").
-- Per-attempt scratch like ingest_staging, dropped with the attempt: filled once by sql/ingest/known_ids.sql,
-- so that the event_ids and events inserts both exclude these ids by probing this small table instead of
-- each scanning event_ids again.
CREATE TABLE IF NOT EXISTS ${database}.ingest_known_ids
(
    attempt_id      String,
    event_id        String
)
ENGINE = MergeTree
PARTITION BY attempt_id
ORDER BY event_id;
