-- Every pair of distinct valid identifiers of one new event, src < dst, aggregated per pair: the run's distinct
-- raw pairs resolved to node keys through the run's key map (run_keys_table.sql; 0 = not a valid identifier of
-- the run: rejected). Raw pairs that resolve to one node pair (other spellings) are summed; one event counts once
-- per node pair, as its identifiers have distinct types.
INSERT INTO ${database}.identity_run_edges (src, dst, first_seen, last_seen, events)
SELECT least(a, b) AS src, greatest(a, b) AS dst, min(first_seen), max(last_seen), sum(events)
FROM (
    SELECT joinGet(${database}.identity_run_keys, 'node_key',
                   cityHash64({seed:UInt64}, identifier_type, raw_value)) AS a,
           joinGet(${database}.identity_run_keys, 'node_key',
                   cityHash64({seed:UInt64}, other_type, other_value)) AS b,
           first_seen, last_seen, events
    FROM ${database}.identity_run_identifiers
    WHERE other_type != ''
)
WHERE a != 0 AND b != 0 AND src != dst
GROUP BY src, dst
