-- Event ids of the attempt's valid messages that `event_ids` already holds from ranges outside the attempt
-- (an ESP's redelivery of an event ingested earlier). Ids recorded for the attempt's own ranges are not
-- "known": a replay after a crash between the event_ids and events inserts then finds the same set, selects
-- the same new events, and the engine drops the blocks it already has by their tokens.
-- Random ids give the primary index nothing to skip, so analysing it against the attempt's id set is pure cost
-- (about 0.2 s of 0.6 s per million events, alternated lab runs).
INSERT INTO ${database}.ingest_known_ids (attempt_id, event_id)
SELECT {attempt:String}, event_id
FROM ${database}.event_ids
PREWHERE event_id IN (
        SELECT event_id FROM ${database}.ingest_staging
        WHERE attempt_id = {attempt:String} AND kafka_topic = {topic:String} AND reason = '')
WHERE NOT (kafka_topic = {topic:String}
         AND arrayExists((p, s, e) -> kafka_partition = p AND kafka_offset >= s AND kafka_offset < e,
                         {partitions:Array(UInt32)}, {starts:Array(UInt64)}, {ends:Array(UInt64)}))
  AND ${staged_here}
SETTINGS use_index_for_in_with_subqueries = 0
