-- Valid identifiers of the new events with when they were seen (aggregated by the table engine).
INSERT INTO ${database}.identity_node_seen (node_key, identifier_type, value, first_seen, last_seen, first_ingested, events)
SELECT node_key, any(identifier_type), any(normalized), min(occurred_at), max(occurred_at), min(ingested_at), count()
FROM ${database}.identity_run_nodes
GROUP BY node_key
