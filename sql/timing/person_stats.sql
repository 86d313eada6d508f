-- Sufficient statistics per (universal_id, delivery hour of week): deliveries, genuinely engaged deliveries
-- and their weight. A message belongs to the person of its first identifier (email, klaviyo_id,
-- external_id, phone) that identity resolution accepted and did not mark shared.
WITH signals AS (${signals}),
people AS (
    SELECT i.identifier_type AS identifier_type, i.raw_value AS raw_value, n.universal_id AS universal_id
    FROM ${database}.identity_identifiers AS i FINAL
    INNER JOIN (SELECT node_key, universal_id FROM ${database}.identity_nodes FINAL WHERE shared = 0) AS n
        ON i.node_key = n.node_key
    WHERE i.reason = ''
),
owned AS (
    SELECT message_id, argMin(p.universal_id, id.1) AS universal_id
    FROM (SELECT message_id, email, klaviyo_id, external_id, phone FROM signals) AS s
    ARRAY JOIN arrayFilter(x -> x.3 != '', [(1, 'email', email), (2, 'klaviyo_id', klaviyo_id),
                                            (3, 'external_id', external_id), (4, 'phone', phone)]) AS id
    INNER JOIN people AS p ON p.identifier_type = id.2 AND p.raw_value = id.3
    GROUP BY message_id
)
SELECT o.universal_id AS universal_id, s.how AS how, count() AS deliveries, sum(s.engaged) AS engaged,
       sum(s.weight) AS weight, sum(s.machine_opens) AS machine_opens, sum(s.scanner_clicks) AS scanner_clicks,
       sum(s.genuine_opens) AS genuine_opens, sum(s.genuine_clicks) AS genuine_clicks, sum(s.opens) AS opens,
       sum(s.clicks) AS clicks
FROM signals AS s
INNER JOIN owned AS o ON o.message_id = s.message_id
GROUP BY universal_id, how
