-- The run's distinct identifiers resolved to node keys; rejected identifiers drop out here and are never stitched.
-- Joined by sorting both sides (spilled past 500 MB), not by a hash table of the run's identifiers: at 2M people
-- faster and ~1 GB less at the endpoint's peak (docs/SCALING.md).
-- The known identifiers are first cut to the run's by a 64-bit hash of (type, value): a set of integers, not of
-- string tuples (a collision only lets a row through to the join, which compares the values themselves). When
-- every known identifier is the run's (the first run, a full rebuild: whole_graph = 1) the cut is skipped: at 2M
-- people the tuple set cost 6.4 s of the endpoint's 9.5 s for this join (docs/SCALING.md).
INSERT INTO ${database}.identity_run_nodes
SELECT n.identifier_type, n.raw_value, i.node_key, i.normalized, n.first_seen, n.last_seen, n.first_ingested, n.events
FROM ${database}.identity_run_identifiers AS n
INNER JOIN (SELECT identifier_type, raw_value, normalized, node_key
            FROM ${database}.identity_identifiers FINAL
            WHERE reason = '' AND ({whole_graph:UInt8} = 1 OR cityHash64(identifier_type, raw_value) IN (
                SELECT cityHash64(identifier_type, raw_value) FROM ${database}.identity_run_identifiers
                WHERE other_type = ''))) AS i
    ON n.identifier_type = i.identifier_type AND n.raw_value = i.raw_value
WHERE n.other_type = '' AND n.identifier_type != ''
SETTINGS join_algorithm = 'full_sorting_merge', max_bytes_before_external_sort = 500000000
