-- Event ids of an attempt that ranges outside it already ingested (docs/INGESTION.md, "Duplicates").
-- Per-attempt scratch in memory like ingest_staging (0012), deleted with the attempt: filled once by sql/ingest/known_ids.sql,
-- so that the event_ids and events inserts both exclude these ids by probing this small table instead of
-- each scanning event_ids again.
CREATE TABLE IF NOT EXISTS ${database}.ingest_known_ids
(
    attempt_id      String,
    event_id        String
)
ENGINE = Memory;
