-- The run's identifiers resolved to node keys; rejected identifiers drop out here and are never stitched.
INSERT INTO ${database}.identity_run_nodes
SELECT n.kafka_topic, n.kafka_partition, n.kafka_offset, n.occurred_at, n.ingested_at,
       i.node_key, n.identifier_type, i.normalized
FROM ${database}.identity_run_identifiers AS n
INNER JOIN (SELECT identifier_type, raw_value, normalized, node_key
            FROM ${database}.identity_identifiers FINAL
            WHERE reason = '' AND (identifier_type, raw_value) IN (
                SELECT identifier_type, raw_value FROM ${database}.identity_run_identifiers)) AS i
    ON n.identifier_type = i.identifier_type AND n.raw_value = i.raw_value
