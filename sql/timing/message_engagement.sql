-- Each delivered message's owner and first GENUINE engagement, from message states (the states placeholder:
-- message_state.sql, or merged states); read by message_outputs.sql (the timing model's rows) and
-- sql/uplift/outcomes.sql (what followed a decision), so both apply the same signal rules and the same owner.
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
-- A message belongs to the person of its first identifier in the contract's priority (sendflowr.contract) that
-- identity accepted and did not mark shared (the owner map, sql/timing/owners.sql): owner_key is that
-- identifier's key in the map (0: no owner), p its person's index there.
WITH
    arrayMin(arrayConcat(click_ms, [toInt64(9e18)])) AS first_click,
    length(arrayDistinct(arrayFilter((u, t) -> t - first_click < {scanner_burst_ms:Int64}, click_url, click_ms)))
        >= {scanner_burst_links:UInt32} AS burst,
    arrayMap((k, t) -> k > 0 OR t - delivered_ms < {scanner_window_ms:Int64}
                       OR (burst AND t - first_click < {scanner_burst_ms:Int64}), click_kind, click_ms) AS is_scanner
SELECT
    ${owner_key} AS owner_key,
    joinGet({owners:String}, 'p', owner_key) AS p,
    opens,
    if(flagged_opens > 0, flagged_opens, toUInt64(length(apple_ms) > 0)) AS machine_opens,
    -- the earliest genuine open: flagged ESPs name their machine opens; otherwise the first proxy open is
    -- the prefetch, so the second one (if any) is the reader's
    if(flagged_opens > 0, first_unflagged_ms,
       least(first_plain_ms, if(length(apple_ms) > 1, apple_ms[2], toInt64(9e18)))) AS genuine_open_ms,
    arrayMin(arrayConcat(arrayFilter((t, s) -> NOT s, click_ms, is_scanner), [toInt64(9e18)])) AS genuine_click_ms,
    least(genuine_open_ms, genuine_click_ms) AS engaged_ms,
    toUInt32(length(click_kind)) AS clicks, toUInt32(arrayCount(is_scanner)) AS scanner_clicks,
    message, delivered_ms
FROM (${states})
WHERE delivered_ms < {observed_before_ms:Int64}
