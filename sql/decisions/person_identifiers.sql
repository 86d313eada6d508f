-- The identifiers of one person (lookup endpoint), as materialized. The API passes the node keys its snapshot
-- holds for the person (a primary-key lookup) and the id; both arrive as bound query parameters.
SELECT toString(identifier_type) AS identifier_type, value, first_seen, last_seen, shared
FROM ${database}.identity_nodes FINAL
WHERE node_key IN {node_keys:Array(UInt64)} AND universal_id = {universal_id:String}
ORDER BY identifier_type, value
