-- One row per owned, delivered message straight from `events`, in one pass: events of committed ingest ranges
-- -> one row per message (grouped on a 128-bit hash of message_id: no collision in practice) with its genuine signal -> its owner p and
-- delivery hour of week. run.py sums the rows per (p, how) with numpy (a second GROUP BY here cost more than the
-- sort). Nothing per message is stored: late events of a message are simply in `events` the next time; every
-- run reads the committed events once (docs/TIMING.md, "Pipeline").
--
-- Signal cleaning (docs/TIMING.md, "Signal cleaning"), per message once all its events are known:
--   * machine opens: the ESP's machine_open flags, else the message's FIRST Apple-proxy open (UA exactly
--     'Mozilla/5.0' or an IP in 17.0.0.0/8) when it comes within mpp_window_ms of delivery (Apple prefetches
--     once, on delivery); later Apple-proxy opens are the reader's. Only the earliest Apple-proxy open matters,
--     so opens are counted, not collected;
--   * scanner clicks: the ESP's bot_click flags (kind 2), a scanner user agent (kind 1), any click within
--     scanner_window_ms of delivery, and every click of a burst reaching scanner_burst_links distinct links
--     within scanner_burst_ms of the message's first click (gateways follow every link at once).
-- A message belongs to the person of its first identifier (email, klaviyo_id, external_id, phone) that
-- identity accepted and did not mark shared (the ${owners} map, sql/timing/owners.sql).
-- delivered_before bounds the deliveries read (the evaluation trains on the past only).
-- Committed ranges: (topic index << 32 | partition) -> committed end, topic index from the topic name.
WITH
    toUnixTimestamp64Milli(delivered_at) AS delivered_ms,
    arrayMin(arrayConcat(click_ms, [toInt64(9e18)])) AS first_click,
    length(arrayDistinct(arrayFilter((u, t) -> t - first_click < {scanner_burst_ms:Int64}, click_url, click_ms)))
        >= {scanner_burst_links:UInt32} AS burst
SELECT p, how, engaged, weight, toUInt32(opens) AS opens, toUInt32(machine_opens) AS machine_opens,
       toUInt32(clicks) AS clicks, toUInt32(scanner_clicks) AS scanner_clicks
FROM
(
    SELECT
        multiIf((joinGet({owners:String}, 'p', cityHash64('email', email)) AS p_email) > 0, p_email,
                (joinGet({owners:String}, 'p', cityHash64('klaviyo_id', klaviyo_id)) AS p_klaviyo) > 0, p_klaviyo,
                (joinGet({owners:String}, 'p', cityHash64('external_id', external_id)) AS p_external) > 0, p_external,
                joinGet({owners:String}, 'p', cityHash64('phone', phone))) AS p,
        toUInt8((toDayOfWeek(delivered_at) - 1) * 24 + toHour(delivered_at)) AS how,
        opens,
        flagged_opens + if(flagged_opens = 0 AND first_apple_open_ms - delivered_ms < {mpp_window_ms:Int64}, 1, 0)
            AS machine_opens,
        opens - machine_opens AS genuine_opens,
        length(click_kind) AS clicks,
        arrayCount((k, t) -> k > 0 OR t - delivered_ms < {scanner_window_ms:Int64}
                                  OR (burst AND t - first_click < {scanner_burst_ms:Int64}),
                   click_kind, click_ms) AS scanner_clicks,
        clicks - scanner_clicks AS genuine_clicks,
        toUInt8(genuine_opens > 0 OR genuine_clicks > 0) AS engaged,
        {open_weight:Float64} * (genuine_opens > 0) + {click_weight:Float64} * (genuine_clicks > 0) AS weight
    FROM
    (
        SELECT
            murmurHash3_128(message_id) AS message,
            max(email) AS email, max(klaviyo_id) AS klaviyo_id, max(phone) AS phone, max(external_id) AS external_id,
            min(if(event_type = 'delivered', occurred_at, toDateTime64('2299-12-31 00:00:00', 3, 'UTC')))
                AS delivered_at,
            countIf(event_type = 'opened') AS opens,
            countIf(event_type = 'opened' AND machine_open = 1) AS flagged_opens,
            min(if(event_type = 'opened' AND machine_open != 1 AND (user_agent = 'Mozilla/5.0' OR startsWith(ip, '17.')),
                   toUnixTimestamp64Milli(occurred_at), toInt64(9e18))) AS first_apple_open_ms,
            groupArrayIf(toUnixTimestamp64Milli(occurred_at), event_type = 'clicked') AS click_ms,
            groupArrayIf(cityHash64(url), event_type = 'clicked') AS click_url,
            -- the event_type guard first: the user-agent search runs on clicks only, not on every event
            groupArrayIf(toUInt8(multiIf(event_type != 'clicked', 0, bot_click = 1, 2,
                                         multiSearchAnyCaseInsensitive(user_agent, {scanner_agents:Array(String)}), 1,
                                         0)),
                         event_type = 'clicked') AS click_kind
        FROM ${database}.events
        WHERE kafka_offset < transform(
                  toUInt64(kafka_partition) + 4294967296 * transform(kafka_topic, {topics:Array(String)},
                                                                     {topic_index:Array(UInt64)}, toUInt64(0)),
                  {range_keys:Array(UInt64)}, {range_ends:Array(UInt64)}, toUInt64(0))
          AND message_id != ''
          AND event_type IN ('delivered', 'opened', 'clicked')
        GROUP BY message
        HAVING delivered_at < {delivered_before:DateTime64(3, 'UTC')}
    )
)
WHERE p > 0
