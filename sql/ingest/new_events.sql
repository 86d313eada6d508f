-- The valid, not-yet-seen events of one attempt's offset ranges, in (partition, offset) order, first copy
-- of each event_id. Ids known from earlier ranges are excluded, but not those of the attempt's own ranges:
-- a replay after a crash then selects exactly the same rows, builds the same insert blocks, and the
-- engine drops them by their insert_deduplication_token. `event_ids` and `events` are both filled from
-- this one SELECT. Ranges arrive as three parallel arrays: partitions, starts, ends (end exclusive).
SELECT
    event_id, event_type, assumeNotNull(occurred_at) AS occurred_at,
    lower(trim(multiIf(email != '', email, klaviyo_id != '', klaviyo_id, phone != '', phone, external_id))) AS person_key,
    email, klaviyo_id, phone, external_id, esp, message_id, campaign_id, user_agent, ip, url, bounce_type,
    machine_open, bot_click, toUInt8(1) AS schema_version, kafka_topic, kafka_partition, kafka_offset
FROM ${database}.ingest_staging
WHERE attempt_id = {attempt:String} AND kafka_topic = {topic:String} AND reason = ''
  AND event_id NOT IN (
      SELECT event_id FROM ${database}.event_ids
      WHERE event_id IN (
              SELECT event_id FROM ${database}.ingest_staging
              WHERE attempt_id = {attempt:String} AND kafka_topic = {topic:String} AND reason = '')
        AND NOT (kafka_topic = {topic:String}
                 AND arrayExists((p, s, e) -> kafka_partition = p AND kafka_offset >= s AND kafka_offset < e,
                                 {partitions:Array(UInt32)}, {starts:Array(UInt64)}, {ends:Array(UInt64)})))
ORDER BY kafka_topic, kafka_partition, kafka_offset
LIMIT 1 BY event_id
