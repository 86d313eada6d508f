-- Whether the run's identifiers have distinct hashes under this seed (run_keys_table.sql): 1 or 0.
SELECT uniqExact(cityHash64({seed:UInt64}, identifier_type, raw_value)) = count()
FROM ${database}.identity_run_nodes
