-- Identifier node -> universal_id and whether it is shared (1 degree guard, 2 conflict: it names no one person),
-- one row per node (the identity graph as the last identity run left it).
SELECT node_key, universal_id, shared
FROM ${database}.identity_nodes FINAL
ORDER BY node_key
