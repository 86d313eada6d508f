-- Cheap change detector for the identity tables the API snapshots: every identity run that changes a node
-- writes rows with a new updated_at; new raw identifiers and merges add rows.
SELECT
    (SELECT max(updated_at) FROM ${database}.identity_nodes) AS nodes_updated_at,
    (SELECT count() FROM ${database}.identity_nodes) AS node_rows,
    (SELECT count() FROM ${database}.identity_identifiers) AS raw_rows,
    (SELECT count() FROM ${database}.identity_merge_log) AS merges
