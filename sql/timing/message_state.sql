-- Per-message state from the events of some ingest ranges: the facts the signal rules read (docs/TIMING.md,
-- "Signal cleaning"), in a form two states of one message merge into (message_merge.sql): first/min times, counts,
-- the two earliest Apple-proxy opens, every click. message_outputs.sql turns states into the model's rows.
-- Ranges: (topic index << 32 | partition) -> [start, end) of offsets, topic index from the topic name (a full
-- build reads every committed range from 0; an incremental run only what was committed since the last one).
-- Events at or after observed_before are not seen (the evaluation trains on the past only); events before since_ms
-- are left out (0: none; a full build seeds the states of still-open messages from the recent events only).
-- Slices: only the messages whose id hashes to {slice} modulo {slices} (1: all; sendflowr.timing.stats.SLICE_EVENTS).
WITH user_agent = 'Mozilla/5.0' OR startsWith(ip, '17.') AS is_proxy,
     toUInt64(kafka_partition) + 4294967296 * transform(kafka_topic, {topics:Array(String)}, {topic_index:Array(UInt64)},
                                                        toUInt64(0)) AS range_key
SELECT
    murmurHash3_128(message_id) AS message,
    max(email) AS email, max(klaviyo_id) AS klaviyo_id, max(phone) AS phone, max(external_id) AS external_id,
    min(if(event_type = 'delivered', toUnixTimestamp64Milli(occurred_at), toInt64(9e18))) AS delivered_ms,
    min(toUnixTimestamp64Milli(occurred_at)) AS first_ms,
    countIf(event_type = 'opened') AS opens,
    countIf(event_type = 'opened' AND machine_open = 1) AS flagged_opens,
    min(if(event_type = 'opened' AND machine_open != 1, toUnixTimestamp64Milli(occurred_at), toInt64(9e18)))
        AS first_unflagged_ms,
    min(if(event_type = 'opened' AND machine_open != 1 AND NOT is_proxy, toUnixTimestamp64Milli(occurred_at),
           toInt64(9e18))) AS first_plain_ms,
    -- the two earliest Apple-proxy opens
    groupArraySortedIf(2)(toUnixTimestamp64Milli(occurred_at), event_type = 'opened' AND machine_open != 1
                                                              AND is_proxy) AS apple_ms,
    groupArrayIf(toUnixTimestamp64Milli(occurred_at), event_type = 'clicked') AS click_ms,
    groupArrayIf(cityHash64(url), event_type = 'clicked') AS click_url,
    -- the event_type guard first: the user-agent search runs on clicks only, not on every event
    groupArrayIf(toUInt8(multiIf(event_type != 'clicked', 0, bot_click = 1, 2,
                                 multiSearchAnyCaseInsensitive(user_agent, {scanner_agents:Array(String)}), 1,
                                 0)),
                 event_type = 'clicked') AS click_kind
FROM ${database}.events
WHERE kafka_offset >= transform(range_key, {range_keys:Array(UInt64)}, {range_starts:Array(UInt64)}, toUInt64(0))
  AND kafka_offset < transform(range_key, {range_keys:Array(UInt64)}, {range_ends:Array(UInt64)}, toUInt64(0))
  AND message_id != ''
  AND event_type IN ('delivered', 'opened', 'clicked')
  AND occurred_at < fromUnixTimestamp64Milli({observed_before_ms:Int64}, 'UTC')
  AND occurred_at >= fromUnixTimestamp64Milli({since_ms:Int64}, 'UTC')
  AND ({slices:UInt64} = 1 OR cityHash64(message_id) % {slices:UInt64} = {slice:UInt64})
GROUP BY message
