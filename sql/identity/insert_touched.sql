-- Region, step 1: every valid identifier of the new events (new nodes, and old ones with new edges or times).
INSERT INTO ${database}.identity_region (node_key, boundary)
SELECT DISTINCT node_key, 0 FROM ${database}.identity_run_nodes
