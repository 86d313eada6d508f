-- Identifier node -> universal_id, one row per node (the identity graph as the last identity run left it).
SELECT node_key, universal_id
FROM ${database}.identity_nodes FINAL
ORDER BY node_key
