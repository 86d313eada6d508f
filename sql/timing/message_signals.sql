-- One row per delivered message with its genuine signal, the machines removed (docs/TIMING.md):
--   * machine opens: the ESP's machine_open flags, else the message's FIRST Apple-proxy open when it comes
--     within mpp_window_ms of delivery (Apple prefetches once, on delivery); later Apple-proxy opens are the
--     reader's (MPP hides the reader's client behind the same proxy);
--   * scanner clicks: the ESP's bot_click flags, a scanner user agent, any click within scanner_window_ms
--     of delivery, and every click of a burst reaching scanner_burst_links distinct links within
--     scanner_burst_ms of the message's first click (gateways follow every link at once).
-- delivered_before bounds the deliveries read (the evaluation trains on the past only).
WITH
    toUnixTimestamp64Milli(delivered_at) AS delivered_ms,
    arrayCount((k, t) -> k = 1 AND toUnixTimestamp64Milli(t) - delivered_ms < {mpp_window_ms:Int64},
               open_kind, open_at) AS apple_early,
    arrayMap(t -> toUnixTimestamp64Milli(t), click_at) AS click_ms,
    arrayMap(t -> t - delivered_ms, click_ms) AS click_lag,
    arrayMin(arrayConcat(click_ms, [toInt64(9e18)])) AS first_click,
    length(arrayDistinct(arrayFilter((u, t) -> t - first_click < {scanner_burst_ms:Int64}, click_url, click_ms)))
        >= {scanner_burst_links:UInt32} AS burst
SELECT
    message_id, email, klaviyo_id, phone, external_id, delivered_at,
    toUInt8((toDayOfWeek(delivered_at) - 1) * 24 + toHour(delivered_at)) AS how,
    length(open_kind) AS opens,
    countEqual(open_kind, 2) + if(countEqual(open_kind, 2) = 0 AND apple_early > 0, 1, 0) AS machine_opens,
    opens - machine_opens AS genuine_opens,
    length(click_kind) AS clicks,
    arrayCount((k, lag, t) -> k > 0 OR lag < {scanner_window_ms:Int64}
                              OR (burst AND t - first_click < {scanner_burst_ms:Int64}),
               click_kind, click_lag, click_ms) AS scanner_clicks,
    clicks - scanner_clicks AS genuine_clicks,
    toUInt8(genuine_opens > 0 OR genuine_clicks > 0) AS engaged,
    {open_weight:Float64} * (genuine_opens > 0) + {click_weight:Float64} * (genuine_clicks > 0) AS weight
FROM
(
    SELECT
        message_id, max(email) AS email, max(klaviyo_id) AS klaviyo_id, max(phone) AS phone,
        max(external_id) AS external_id, min(delivered_at) AS delivered_at,
        groupArrayArray(open_at) AS open_at, groupArrayArray(open_kind) AS open_kind,
        groupArrayArray(click_at) AS click_at, groupArrayArray(click_url) AS click_url,
        groupArrayArray(click_kind) AS click_kind
    FROM ${database}.timing_messages
    GROUP BY message_id
    HAVING delivered_at < {delivered_before:DateTime64(3, 'UTC')}
)
