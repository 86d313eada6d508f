-- Sufficient statistics per (universal_id, delivery hour of week): deliveries, genuinely engaged deliveries
-- and their weight. A message belongs to the person of its first identifier (email, klaviyo_id,
-- external_id, phone) that identity resolution accepted and did not mark shared: one hash join per
-- identifier type (each raw identifier maps to at most one person), no regrouping by message.
WITH ids AS (
    SELECT i.identifier_type AS t, i.raw_value AS v, n.universal_id AS u
    FROM ${database}.identity_identifiers AS i FINAL
    INNER JOIN (SELECT node_key, universal_id FROM ${database}.identity_nodes FINAL WHERE shared = 0) AS n
        ON i.node_key = n.node_key
    WHERE i.reason = ''
)
SELECT universal_id, how, count() AS deliveries, sum(engaged) AS engaged, sum(weight) AS weight,
       sum(machine_opens) AS machine_opens, sum(scanner_clicks) AS scanner_clicks,
       sum(genuine_opens) AS genuine_opens, sum(genuine_clicks) AS genuine_clicks, sum(opens) AS opens,
       sum(clicks) AS clicks
FROM
(
    SELECT s.how AS how, s.engaged AS engaged, s.weight AS weight, s.machine_opens AS machine_opens,
           s.scanner_clicks AS scanner_clicks, s.genuine_opens AS genuine_opens,
           s.genuine_clicks AS genuine_clicks, s.opens AS opens, s.clicks AS clicks,
           multiIf(e.u != '', e.u, k.u != '', k.u, x.u != '', x.u, p.u) AS universal_id
    FROM (${signals}) AS s
    LEFT JOIN (SELECT v, u FROM ids WHERE t = 'email') AS e ON e.v = s.email
    LEFT JOIN (SELECT v, u FROM ids WHERE t = 'klaviyo_id') AS k ON k.v = s.klaviyo_id
    LEFT JOIN (SELECT v, u FROM ids WHERE t = 'external_id') AS x ON x.v = s.external_id
    LEFT JOIN (SELECT v, u FROM ids WHERE t = 'phone') AS p ON p.v = s.phone
)
WHERE universal_id != ''
GROUP BY universal_id, how
