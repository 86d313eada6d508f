-- Fill the run's key map (run_keys_table.sql) under the seed run_keys_distinct.sql accepted.
INSERT INTO ${database}.identity_run_keys
SELECT cityHash64({seed:UInt64}, identifier_type, raw_value), node_key
FROM ${database}.identity_run_nodes
