-- Evaluation: every raw identifier stitching accepted -> the universal_id of its node (rejected ones have none).
SELECT toString(i.identifier_type) AS identifier_type, i.raw_value AS raw_value, n.universal_id AS universal_id,
       n.shared AS shared
FROM ${database}.identity_identifiers AS i FINAL
INNER JOIN (SELECT node_key, universal_id, shared FROM ${database}.identity_nodes FINAL) AS n
    ON i.node_key = n.node_key
WHERE i.reason = ''
