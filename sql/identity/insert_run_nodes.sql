-- The run's distinct identifiers resolved to node keys; rejected identifiers drop out here and are never stitched.
-- Joined by sorting both sides (spilled past 500 MB), not by a hash table of the run's identifiers: at 2M people
-- faster and ~1 GB less at the endpoint's peak (docs/SCALING.md).
INSERT INTO ${database}.identity_run_nodes
SELECT n.identifier_type, n.raw_value, i.node_key, i.normalized, n.first_seen, n.last_seen, n.first_ingested, n.events
FROM ${database}.identity_run_identifiers AS n
INNER JOIN (SELECT identifier_type, raw_value, normalized, node_key
            FROM ${database}.identity_identifiers FINAL
            WHERE reason = '' AND (identifier_type, raw_value) IN (
                SELECT identifier_type, raw_value FROM ${database}.identity_run_identifiers WHERE other_type = '')) AS i
    ON n.identifier_type = i.identifier_type AND n.raw_value = i.raw_value
WHERE n.other_type = '' AND n.identifier_type != ''
SETTINGS join_algorithm = 'full_sorting_merge', max_bytes_before_external_sort = 500000000
