-- Event ids of the attempt's valid messages that `event_ids` already holds from ranges outside the attempt
-- (an ESP's redelivery of an event ingested earlier). Ids recorded for the attempt's own ranges are not
-- "known": a replay after a crash between the event_ids and events inserts then finds the same set, selects
-- the same new events, and the engine drops the blocks it already has by their tokens.
-- Every row of event_ids is read (random ids give the primary index nothing to skip, so analysing it against
-- the attempt's set is pure cost), but only its 8-byte hash (migration 0018): the ids themselves are read and
-- compared only where a hash matched, so a hash collision never makes an id known.
INSERT INTO ${database}.ingest_known_ids (attempt_id, event_id)
SELECT {attempt:String}, event_id
FROM ${database}.event_ids
PREWHERE id_hash IN (
        SELECT cityHash64(event_id) FROM ${database}.ingest_staging
        WHERE attempt_id = {attempt:String} AND kafka_topic = {topic:String} AND reason = '')
WHERE event_id IN (
        SELECT event_id FROM ${database}.ingest_staging
        WHERE attempt_id = {attempt:String} AND kafka_topic = {topic:String} AND reason = '')
  AND NOT (kafka_topic = {topic:String}
         AND arrayExists((p, s, e) -> kafka_partition = p AND kafka_offset >= s AND kafka_offset < e,
                         {partitions:Array(UInt32)}, {starts:Array(UInt64)}, {ends:Array(UInt64)}))
  AND ${staged_here}
SETTINGS use_index_for_in_with_subqueries = 0
