-- The model's row of each owned, delivered message (docs/TIMING.md, "Pipeline"), from its owner and first genuine
-- engagement (message_engagement.sql, over the states placeholder): its owner's index p, delivery hour (hours since
-- the epoch) and second, and how long it waited for its first genuine engagement.
-- Engagement at or after observed_before is not seen: the message is censored there.
-- delivered_second: into its hour (the part of the delivery hour left is exposure too, sendflowr/timing/hazard.py).
-- `wait` = clock hours from the delivery hour to the engagement hour (engaged = 1) or to the last hour the
-- message was seen waiting (engaged = 0), capped at horizon_hours - 1. The extra placeholder: more output columns (an incremental
-- run asks for the message key and delivery time).
SELECT p, toUInt32(delivered_hour) AS delivered_hour, toUInt16(intDiv(delivered_ms % 3600000, 1000)) AS delivered_second,
       toUInt16(least(if(engaged, engaged_hour - delivered_hour, seen_hours), {horizon_hours:Int64} - 1)) AS wait,
       toUInt8(engaged AND engaged_hour - delivered_hour < {horizon_hours:Int64}) AS engaged,
       toUInt32(opens) AS opens, toUInt32(machine_opens) AS machine_opens,
       clicks, scanner_clicks, toUInt8(genuine_click_ms < {observed_before_ms:Int64}) AS clicked${extra}
FROM
(
    SELECT *,
           intDiv(delivered_ms, 3600000) AS delivered_hour,
           intDiv({observed_before_ms:Int64} - 1, 3600000) - delivered_hour AS seen_hours,
           engaged_ms < {observed_before_ms:Int64} AS engaged,
           intDiv(engaged_ms, 3600000) AS engaged_hour
    FROM (${sql:timing/message_engagement.sql})
    WHERE p > 0
)
