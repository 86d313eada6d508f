-- The one raw identifier -> universal_id join: every raw identifier stitching accepted (rejected ones have no
-- node), its node and that node's person. `shared` != 0: the identifier names no one (a household phone, a role
-- address); owners of messages skip those. Readers include this file (a `sql:` include, sendflowr/sql_files.py)
-- and filter outside; ClickHouse pushes their filters into both sides.
SELECT toString(i.identifier_type) AS identifier_type, i.raw_value AS raw_value, i.node_key AS node_key,
       n.universal_id AS universal_id, n.shared AS shared
FROM ${database}.identity_identifiers AS i FINAL
INNER JOIN (SELECT node_key, universal_id, shared FROM ${database}.identity_nodes FINAL) AS n
    ON i.node_key = n.node_key
WHERE i.reason = ''
