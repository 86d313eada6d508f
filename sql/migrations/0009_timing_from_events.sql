-- Timing runs read the committed events straight from `events` in one pass (sql/timing/person_stats.sql):
-- per-message partial rows are no longer kept. timing_progress stays as the "anything new?" watermark.
DROP TABLE IF EXISTS ${database}.timing_messages;
