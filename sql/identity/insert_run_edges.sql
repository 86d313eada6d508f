-- Every pair of distinct valid identifiers of one new event, src < dst, aggregated per pair: the run's distinct
-- raw pairs resolved to node keys. Raw pairs that resolve to one node pair (other spellings) are summed; one event
-- counts once per node pair, as its identifiers have distinct types.
-- Joined by sorting both sides (spilled past 500 MB), not by a hash table of the run's identifiers: at 2M people
-- faster and ~1 GB less at the endpoint's peak (docs/SCALING.md).
INSERT INTO ${database}.identity_run_edges (src, dst, first_seen, last_seen, events)
SELECT least(a.node_key, b.node_key) AS src, greatest(a.node_key, b.node_key) AS dst,
       min(p.first_seen), max(p.last_seen), sum(p.events)
FROM ${database}.identity_run_identifiers AS p
INNER JOIN ${database}.identity_run_nodes AS a ON p.identifier_type = a.identifier_type AND p.raw_value = a.raw_value
INNER JOIN ${database}.identity_run_nodes AS b ON p.other_type = b.identifier_type AND p.other_value = b.raw_value
WHERE p.other_type != '' AND src != dst
GROUP BY src, dst
SETTINGS join_algorithm = 'full_sorting_merge', max_bytes_before_external_sort = 500000000
