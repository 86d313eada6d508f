-- The identity graph as the last run left it.
SELECT node_key, universal_id, cluster, shared,
       toUnixTimestamp64Milli(first_seen) AS first_seen, toUnixTimestamp64Milli(last_seen) AS last_seen
FROM ${database}.identity_nodes FINAL
ORDER BY node_key
