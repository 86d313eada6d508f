-- The valid, not-yet-seen events of one attempt, in (partition, offset) order, first copy of each event: its id in
-- the UTC hour it occurred (migration 0019).
-- Ids known from earlier ranges were collected once into ingest_known_ids (known_ids.sql); `event_ids` and
-- `events` are both filled from this one SELECT, so they get the same rows, and a replay of the attempt's
-- ranges selects exactly the same rows again. (occurred_hour, event_id) is the event (migration 0019).
SELECT
    event_id, event_type, assumeNotNull(occurred_at) AS occurred_at, toStartOfHour(occurred_at) AS occurred_hour,
    -- the event's best identifier in the contract's priority (sendflowr.contract), as timing and the API rank them
    lower(trim(${best_identifier})) AS person_key,
    email, klaviyo_id, phone, external_id, esp, message_id, campaign_id, user_agent, ip, url, bounce_type,
    machine_open, bot_click, toUInt8(1) AS schema_version, kafka_topic, kafka_partition, kafka_offset
FROM ${database}.ingest_staging
WHERE attempt_id = {attempt:String} AND kafka_topic = {topic:String} AND reason = ''
  AND (occurred_hour, event_id) NOT IN (
        SELECT occurred_hour, event_id FROM ${database}.ingest_known_ids WHERE attempt_id = {attempt:String})
  AND ${staged_here}
ORDER BY kafka_topic, kafka_partition, kafka_offset
LIMIT 1 BY occurred_hour, event_id
