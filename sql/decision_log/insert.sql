-- The attempt's valid decision-log messages as one row per decision, in a total order (partition, offset, position
-- in the message) so that a replay builds the same blocks. The column list, values and arrays are rendered from
-- records.FIELDS by sendflowr/decisions/log_ingest.py; the subquery is sql/decision_log/parsed.sql.
INSERT INTO ${database}.decision_log (${columns}, kafka_topic, kafka_partition, kafka_offset, kafka_row)
SELECT ${values}, kafka_topic, kafka_partition, kafka_offset, kafka_row
FROM (SELECT kafka_topic, kafka_partition, kafka_offset, columns FROM (${parsed}) WHERE reason = '')
ARRAY JOIN ${arrays}, arrayEnumerate(tupleElement(columns, 'decision_id')) AS kafka_row
ORDER BY kafka_partition, kafka_offset, kafka_row
