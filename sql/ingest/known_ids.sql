-- Events of the attempt's valid messages that `event_ids` already holds from ranges outside the attempt (an ESP's
-- redelivery of an event ingested earlier): an event is its id in the UTC hour it occurred (migration 0019). Ids
-- recorded for the attempt's own ranges are not "known": a replay after a crash between the event_ids and events
-- inserts then finds the same set, selects the same new events, and the engine drops the blocks it already has by
-- their tokens.
-- event_ids is sorted by (hour, id hash): the primary index keeps only the granules that can hold one of the
-- attempt's pairs, the PREWHERE reads their 12-byte keys, and the ids themselves are compared only where a key
-- matched, so a hash collision never makes an event known.
INSERT INTO ${database}.ingest_known_ids (attempt_id, occurred_hour, event_id)
SELECT {attempt:String}, occurred_hour, event_id
FROM ${database}.event_ids
PREWHERE (occurred_hour, id_hash) IN (
        SELECT toStartOfHour(assumeNotNull(occurred_at)), cityHash64(event_id) FROM ${database}.ingest_staging
        WHERE attempt_id = {attempt:String} AND kafka_topic = {topic:String} AND reason = '')
WHERE (occurred_hour, event_id) IN (
        SELECT toStartOfHour(assumeNotNull(occurred_at)), event_id FROM ${database}.ingest_staging
        WHERE attempt_id = {attempt:String} AND kafka_topic = {topic:String} AND reason = '')
  AND NOT (kafka_topic = {topic:String}
         AND arrayExists((p, s, e) -> kafka_partition = p AND kafka_offset >= s AND kafka_offset < e,
                         {partitions:Array(UInt32)}, {starts:Array(UInt64)}, {ends:Array(UInt64)}))
  AND ${staged_here}
