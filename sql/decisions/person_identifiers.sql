-- The identifiers of one person (lookup endpoint), as materialized; the id comes in as a query parameter.
SELECT toString(identifier_type) AS identifier_type, value, first_seen, last_seen, shared
FROM ${database}.identity_nodes FINAL
WHERE universal_id = {universal_id:String}
ORDER BY identifier_type, value
