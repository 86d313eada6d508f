-- One row per owned, delivered message straight from `events`, in one pass (docs/TIMING.md, "Pipeline"):
-- events of committed ingest ranges -> one row per message (grouped on a 128-bit hash of message_id) with
-- its owner p, delivery hour (hours since the epoch) and how long it waited for its first GENUINE engagement. run.py turns
-- the rows into the hazard model's per-person statistics with numpy.
--
-- Signal cleaning (docs/TIMING.md, "Signal cleaning"), per message once all its events are known:
--   * machine opens: the ESP's machine_open flags; else the message's FIRST Apple-proxy open (UA exactly
--     'Mozilla/5.0' or an IP in 17.0.0.0/8), however late it came: Apple prefetches once per message, on
--     delivery or when the device next wakes (minutes to hours later), and a reader behind the same proxy
--     can only come after it or in its place. So the first genuine open is the earliest non-proxy open or
--     the SECOND proxy open;
--   * scanner clicks: the ESP's bot_click flags, a scanner user agent, any click within scanner_window_ms of
--     delivery, and every click of a burst reaching scanner_burst_links distinct links within
--     scanner_burst_ms of the message's first click (gateways follow every link at once, whatever agent
--     they send).
-- A message belongs to the person of its first identifier in the contract's priority that identity accepted
-- and did not mark shared (the ${owners} map, sql/timing/owners.sql).
-- Time is cut at observed_before: deliveries after it are not read, and engagement after it is not seen (the
-- message is censored there: the evaluation trains on the past only, a run on what has happened).
-- delivered_second: into its hour (the part of the delivery hour left is exposure too, sendflowr/timing/hazard.py).
-- `wait` = clock hours from the delivery hour to the engagement hour (engaged = 1) or to the last hour the
-- message was seen waiting (engaged = 0), capped at horizon_hours - 1.
-- Committed ranges: (topic index << 32 | partition) -> committed end, topic index from the topic name.
SELECT p, toUInt32(delivered_hour) AS delivered_hour,
       toUInt16(intDiv(delivered_ms % 3600000, 1000)) AS delivered_second, toUInt16(least(if(engaged, engaged_hour - delivered_hour, seen_hours),
                              {horizon_hours:Int64} - 1)) AS wait,
       toUInt8(engaged AND engaged_hour - delivered_hour < {horizon_hours:Int64}) AS engaged,
       toUInt32(opens) AS opens, toUInt32(machine_opens) AS machine_opens,
       clicks, scanner_clicks, toUInt8(genuine_click_ms < {observed_before_ms:Int64}) AS clicked
FROM
(
    WITH
        toUnixTimestamp64Milli(delivered_at) AS delivered_ms,
        arrayMin(arrayConcat(click_ms, [toInt64(9e18)])) AS first_click,
        length(arrayDistinct(arrayFilter((u, t) -> t - first_click < {scanner_burst_ms:Int64}, click_url, click_ms)))
            >= {scanner_burst_links:UInt32} AS burst,
        arrayMap((k, t) -> k > 0 OR t - delivered_ms < {scanner_window_ms:Int64}
                           OR (burst AND t - first_click < {scanner_burst_ms:Int64}), click_kind, click_ms) AS is_scanner,
        intDiv(delivered_ms, 3600000) AS delivered_hour,
        intDiv({observed_before_ms:Int64} - 1, 3600000) - delivered_hour AS seen_hours
    SELECT
        multiIf((joinGet({owners:String}, 'p', cityHash64('email', email)) AS p_email) > 0, p_email,
                (joinGet({owners:String}, 'p', cityHash64('klaviyo_id', klaviyo_id)) AS p_klaviyo) > 0, p_klaviyo,
                (joinGet({owners:String}, 'p', cityHash64('external_id', external_id)) AS p_external) > 0, p_external,
                joinGet({owners:String}, 'p', cityHash64('phone', phone))) AS p,
        opens,
        if(flagged_opens > 0, flagged_opens, toUInt64(length(apple_ms) > 0)) AS machine_opens,
        -- the earliest genuine open: flagged ESPs name their machine opens; otherwise the first proxy open is
        -- the prefetch, so the second one (if any) is the reader's
        if(flagged_opens > 0, first_unflagged_ms, least(first_plain_ms, if(length(apple_ms) > 1, apple_ms[2], toInt64(9e18))))
            AS genuine_open_ms,
        arrayMin(arrayConcat(arrayFilter((t, s) -> NOT s, click_ms, is_scanner), [toInt64(9e18)]))
            AS genuine_click_ms,
        least(genuine_open_ms, genuine_click_ms) AS engaged_ms,
        engaged_ms < {observed_before_ms:Int64} AS engaged,
        intDiv(engaged_ms, 3600000) AS engaged_hour,
        toUInt32(length(click_kind)) AS clicks, toUInt32(arrayCount(is_scanner)) AS scanner_clicks,
        delivered_ms, delivered_hour, seen_hours
    FROM
    (
        WITH user_agent = 'Mozilla/5.0' OR startsWith(ip, '17.') AS is_proxy
        SELECT
            murmurHash3_128(message_id) AS message,
            max(email) AS email, max(klaviyo_id) AS klaviyo_id, max(phone) AS phone, max(external_id) AS external_id,
            min(if(event_type = 'delivered', occurred_at, toDateTime64('2299-12-31 00:00:00', 3, 'UTC')))
                AS delivered_at,
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
        WHERE kafka_offset < transform(
                  toUInt64(kafka_partition) + 4294967296 * transform(kafka_topic, {topics:Array(String)},
                                                                     {topic_index:Array(UInt64)}, toUInt64(0)),
                  {range_keys:Array(UInt64)}, {range_ends:Array(UInt64)}, toUInt64(0))
          AND message_id != ''
          AND event_type IN ('delivered', 'opened', 'clicked')
          AND occurred_at < fromUnixTimestamp64Milli({observed_before_ms:Int64}, 'UTC')
        GROUP BY message
        HAVING delivered_at < fromUnixTimestamp64Milli({observed_before_ms:Int64}, 'UTC')
    )
)
WHERE p > 0
