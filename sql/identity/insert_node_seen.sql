-- Valid identifiers of the new events with when they were seen (aggregated by the table engine).
INSERT INTO ${database}.identity_node_seen (node_key, identifier_type, value, first_seen, last_seen, first_ingested, events)
SELECT i.node_key, any(i.identifier_type), any(i.normalized), min(n.occurred_at), max(n.occurred_at),
       min(n.ingested_at), count()
FROM (${new_identifiers}) AS n
INNER JOIN (SELECT toString(identifier_type) AS identifier_type, raw_value, normalized, node_key
                FROM ${database}.identity_identifiers FINAL WHERE reason = '') AS i
    ON n.identifier_type = i.identifier_type AND n.raw_value = i.raw_value
GROUP BY i.node_key
