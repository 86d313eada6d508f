-- What happened after each logged decision (docs/EVALUATION.md), summed per group of people, arm, fallback level
-- and evidence bucket, for the timing_uplift asset (sendflowr/uplift/measure.py). People are hashed into at most
-- {groups:UInt64} groups, the units the bootstrap resamples: a person's decisions always stay together.
--
-- 1. decisions: the latest answer per (person, campaign_id, message_id) when either id is given (a retry is the
--    same decision asked again); every answer when neither is.
-- 2. message_outcomes: each delivered message's owner (universal_id) and first genuine engagement, by the timing
--    model's own signal rules and owner (sql/timing/message_engagement.sql over message_state.sql: the committed
--    events from {since_ms:Int64}, the earliest window start less the tolerance, measure.py).
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
        WHERE decided_at >= fromUnixTimestamp64Milli({decided_since_ms:Int64}, 'UTC')
          AND decided_at < fromUnixTimestamp64Milli({observed_before_ms:Int64}, 'UTC')
        ORDER BY decided_at DESC, decision_id
        LIMIT 1 BY universal_id, campaign_id, message_id, if(campaign_id = '' AND message_id = '', decision_id, '')
    ),
    message_outcomes AS
    (
        SELECT message, joinGet({owners:String}, 'universal_id', owner_key) AS owner, delivered_ms,
               engaged_ms AS genuine_ms
        FROM (${sql:timing/message_engagement.sql})
    ),
    named AS (SELECT DISTINCT murmurHash3_128(message_id) AS message FROM decisions WHERE message_id != ''),
    by_message AS
    (
        SELECT d.decision_id AS decision_id, m.delivered_ms AS delivered_ms, m.genuine_ms AS genuine_ms
        FROM decisions AS d
        INNER JOIN message_outcomes AS m ON m.message = murmurHash3_128(d.message_id)
        WHERE d.message_id != ''
    ),
    by_time AS
    (
        SELECT decision_id, message, delivered_ms, genuine_ms
        FROM
        (
            SELECT d.decision_id AS decision_id, m.message AS message, m.delivered_ms AS delivered_ms,
                   m.genuine_ms AS genuine_ms, abs(m.delivered_ms - d.chosen_ms) AS distance
            FROM (SELECT * FROM decisions WHERE message_id = '') AS d
            INNER JOIN (SELECT * FROM message_outcomes WHERE owner != '' AND message NOT IN (SELECT message FROM named))
                AS m ON m.owner = d.universal_id
            WHERE m.delivered_ms >= d.after_ms - {tolerance_ms:Int64} AND m.delivered_ms < d.before_ms + {tolerance_ms:Int64}
            ORDER BY distance, decision_id, message
            LIMIT 1 BY decision_id
        )
        ORDER BY distance, decision_id, message
        LIMIT 1 BY message
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
