-- The run's pairs into the graph's edges (aggregated by the table engine).
INSERT INTO ${database}.identity_edges (src, dst, first_seen, last_seen, events)
SELECT src, dst, first_seen, last_seen, events FROM ${database}.identity_run_edges
