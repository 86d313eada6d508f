-- The valid, not-yet-seen events of one staged offset range, in offset order, first copy of each event_id.
-- Event ids known from earlier ranges are excluded, but not those of this very range: a replay after a
-- crash then selects exactly the same rows, builds the same insert blocks, and the engine drops them by
-- their insert_deduplication_token. Both `events` and `event_ids` are filled from this one SELECT.
SELECT
    event_id, event_type, assumeNotNull(occurred_at) AS occurred_at,
    lower(trim(multiIf(email != '', email, klaviyo_id != '', klaviyo_id, phone != '', phone, external_id))) AS person_key,
    email, klaviyo_id, phone, external_id, esp, message_id, campaign_id, user_agent, ip, url, bounce_type,
    machine_open, bot_click, toUInt8(1) AS schema_version, kafka_topic, kafka_partition, kafka_offset
FROM ${database}.ingest_staging
WHERE attempt_id = {attempt:String} AND kafka_topic = {topic:String} AND kafka_partition = {partition:UInt32}
  AND kafka_offset >= {start:UInt64} AND kafka_offset < {end:UInt64} AND reason = ''
  AND event_id NOT IN (
      SELECT event_id FROM ${database}.event_ids
      WHERE event_id IN (
              SELECT event_id FROM ${database}.ingest_staging
              WHERE attempt_id = {attempt:String} AND kafka_topic = {topic:String}
                AND kafka_partition = {partition:UInt32} AND reason = '')
        AND NOT (kafka_topic = {topic:String} AND kafka_partition = {partition:UInt32}
                 AND kafka_offset >= {start:UInt64} AND kafka_offset < {end:UInt64}))
ORDER BY kafka_offset
LIMIT 1 BY event_id
