-- Valid identifiers of the new events with when they were seen (aggregated by the table engine; several raw
-- spellings of one node are summed here).
INSERT INTO ${database}.identity_node_seen (node_key, identifier_type, value, first_seen, last_seen, first_ingested, events)
SELECT node_key, any(identifier_type), any(normalized), min(first_seen), max(last_seen), min(first_ingested), sum(events)
FROM ${database}.identity_run_nodes
GROUP BY node_key
