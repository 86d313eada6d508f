-- What happened after each logged decision (docs/EVALUATION.md), summed per group of people, arm, fallback level
-- and evidence bucket, for the timing_uplift asset (sendflowr/uplift/measure.py). People are hashed into at most
-- {groups:UInt64} groups, the units the bootstrap resamples: a person's decisions always stay together.
--
-- 1. decisions: the latest answer per (person, campaign_id, message_id) when either id is given (a retry is the
--    same decision asked again); every answer when neither is.
-- 2. message_outcomes: the genuine engagement of each delivered message, with the timing model's signal rules.
--    THIS CTE IS THE ONE TO POINT AT THE SHARED PER-MESSAGE SQL (sql/timing/messages.sql) once it lands: per
--    message_id, its owner (universal_id), delivery time and first genuine engagement time. Rules: a machine
--    open is an ESP-flagged one, else the message's FIRST Apple-proxy open (UA exactly 'Mozilla/5.0' or an IP in
--    17.0.0.0/8, whenever it comes: Apple prefetches once per message), so the first genuine open is the earliest
--    non-proxy open or the second proxy open; a scanner click is ESP-flagged, has a scanner user agent, comes
--    within scanner_window_ms of delivery, or belongs to a burst of scanner_burst_links distinct links within
--    scanner_burst_ms of the message's first click. The owner is the message's first identifier (in
--    the contract's priority, sendflowr.contract) identity accepted and did not mark shared (the owner map, sql/timing/owners.sql).
-- 3. the delivery of each decision: the message it names (message_id); else the person's delivery nearest the
--    chosen moment within the window widened by {tolerance_ms:Int64}, among messages no decision names, each
--    delivery going to its nearest decision.
-- 4. per decision: due (the chosen moment is past by the tolerance), compliant (delivered within the tolerance of
--    the chosen moment), matured (delivered at least {horizon_ms:Int64} before {observed_before_ms:Int64}) and
--    engaged (a genuine engagement within the horizon of delivery).
WITH
    decisions AS
    (
        SELECT decision_id, universal_id, toString(arm) AS arm, toString(fallback_level) AS fallback_level,
               evidence, expected_engagement, message_id,
               toUnixTimestamp64Milli(delivery_at) AS chosen_ms,
               toUnixTimestamp64Milli(send_after) AS after_ms, toUnixTimestamp64Milli(send_before) AS before_ms
        FROM ${database}.decision_log
        WHERE decided_at >= fromUnixTimestamp64Milli({since_ms:Int64}, 'UTC')
          AND decided_at < fromUnixTimestamp64Milli({observed_before_ms:Int64}, 'UTC')
        ORDER BY decided_at DESC, decision_id
        LIMIT 1 BY universal_id, campaign_id, message_id, if(campaign_id = '' AND message_id = '', decision_id, '')
    ),
    message_outcomes AS
    (
        SELECT message_id,
               arrayFirst(u -> u != '', arrayMap((t, v) -> joinGet({owners:String}, 'universal_id', cityHash64(t, v)),
                                                 [${identifier_types_by_priority}],
                                                 [${identifier_columns_by_priority}])) AS owner,
               delivered_ms,
               arrayMin(arrayConcat(click_ms, [toInt64(9e18)])) AS first_click,
               length(arrayDistinct(arrayFilter((u, t) -> t - first_click < {scanner_burst_ms:Int64}, click_url, click_ms)))
                   >= {scanner_burst_links:UInt32} AS burst,
               if(flagged_opens > 0, first_unflagged_ms,
                  least(first_plain_ms, if(length(apple_ms) > 1, apple_ms[2], toInt64(9e18)))) AS genuine_open_ms,
               arrayMin(arrayConcat(arrayFilter((t, k) -> NOT (k > 0 OR t - delivered_ms < {scanner_window_ms:Int64}
                                                             OR (burst AND t - first_click < {scanner_burst_ms:Int64})),
                                                click_ms, click_kind), [toInt64(9e18)])) AS genuine_click_ms,
               least(genuine_open_ms, genuine_click_ms) AS genuine_ms
        FROM
        (
            WITH user_agent = 'Mozilla/5.0' OR startsWith(ip, '17.') AS is_proxy
            SELECT message_id,
                   max(email) AS email, max(klaviyo_id) AS klaviyo_id, max(phone) AS phone,
                   max(external_id) AS external_id,
                   min(if(event_type = 'delivered', toUnixTimestamp64Milli(occurred_at), toInt64(9e18))) AS delivered_ms,
                   countIf(event_type = 'opened' AND machine_open = 1) AS flagged_opens,
                   min(if(event_type = 'opened' AND machine_open != 1, toUnixTimestamp64Milli(occurred_at),
                          toInt64(9e18))) AS first_unflagged_ms,
                   min(if(event_type = 'opened' AND machine_open != 1 AND NOT is_proxy,
                          toUnixTimestamp64Milli(occurred_at), toInt64(9e18))) AS first_plain_ms,
                   groupArraySortedIf(2)(toUnixTimestamp64Milli(occurred_at),
                                         event_type = 'opened' AND machine_open != 1 AND is_proxy) AS apple_ms,
                   groupArrayIf(toUnixTimestamp64Milli(occurred_at), event_type = 'clicked') AS click_ms,
                   groupArrayIf(cityHash64(url), event_type = 'clicked') AS click_url,
                   groupArrayIf(toUInt8(multiIf(event_type != 'clicked', 0, bot_click = 1, 2,
                                                multiSearchAnyCaseInsensitive(user_agent, {scanner_agents:Array(String)}),
                                                1, 0)),
                                event_type = 'clicked') AS click_kind
            FROM ${database}.events
            WHERE message_id != '' AND event_type IN ('delivered', 'opened', 'clicked')
              AND occurred_at >= fromUnixTimestamp64Milli((SELECT min(after_ms) FROM decisions) - {tolerance_ms:Int64}, 'UTC')
              AND occurred_at < fromUnixTimestamp64Milli({observed_before_ms:Int64}, 'UTC')
            GROUP BY message_id
            HAVING delivered_ms < {observed_before_ms:Int64}
        )
    ),
    named AS (SELECT DISTINCT message_id FROM decisions WHERE message_id != ''),
    by_message AS
    (
        SELECT d.decision_id AS decision_id, m.delivered_ms AS delivered_ms, m.genuine_ms AS genuine_ms
        FROM decisions AS d
        INNER JOIN message_outcomes AS m ON m.message_id = d.message_id
        WHERE d.message_id != ''
    ),
    by_time AS
    (
        SELECT decision_id, message_id, delivered_ms, genuine_ms
        FROM
        (
            SELECT d.decision_id AS decision_id, m.message_id AS message_id, m.delivered_ms AS delivered_ms,
                   m.genuine_ms AS genuine_ms, abs(m.delivered_ms - d.chosen_ms) AS distance
            FROM (SELECT * FROM decisions WHERE message_id = '') AS d
            INNER JOIN (SELECT * FROM message_outcomes WHERE owner != '' AND message_id NOT IN (SELECT message_id FROM named))
                AS m ON m.owner = d.universal_id
            WHERE m.delivered_ms >= d.after_ms - {tolerance_ms:Int64} AND m.delivered_ms < d.before_ms + {tolerance_ms:Int64}
            ORDER BY distance, decision_id, message_id
            LIMIT 1 BY decision_id
        )
        ORDER BY distance, decision_id, message_id
        LIMIT 1 BY message_id
    ),
    matched AS
    (
        SELECT decision_id, delivered_ms, genuine_ms, 1 AS found FROM by_message
        UNION ALL
        SELECT decision_id, delivered_ms, genuine_ms, 1 AS found FROM by_time
    ),
    outcomes AS
    (
        SELECT d.universal_id AS universal_id, d.arm AS arm, d.fallback_level AS fallback_level,
               arrayFirstIndex(edge -> d.evidence < edge, {bucket_edges:Array(Float64)}) AS bucket,
               d.expected_engagement AS expected_engagement,
               d.chosen_ms + {tolerance_ms:Int64} <= {observed_before_ms:Int64} AS is_due,
               x.found = 1 AS is_delivered,
               is_delivered AND abs(x.delivered_ms - d.chosen_ms) <= {tolerance_ms:Int64} AS is_compliant,
               is_delivered AND x.delivered_ms + {horizon_ms:Int64} <= {observed_before_ms:Int64} AS is_matured,
               is_matured AND x.genuine_ms - x.delivered_ms < {horizon_ms:Int64} AS is_engaged
        FROM decisions AS d
        LEFT JOIN matched AS x ON x.decision_id = d.decision_id
    )
SELECT cityHash64(universal_id) % {groups:UInt64} AS unit, arm, fallback_level, toUInt8(bucket) AS bucket,
       count() AS decisions, countIf(is_due) AS due, countIf(is_delivered) AS delivered,
       countIf(is_due AND is_compliant) AS compliant, countIf(is_matured) AS matured, countIf(is_engaged) AS engaged,
       sumIf(expected_engagement, is_matured) AS expected
FROM outcomes
GROUP BY unit, arm, fallback_level, bucket
ORDER BY unit, arm, fallback_level, bucket
