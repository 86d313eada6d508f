-- Messages of one offset range that broke the contract, with the reason and a size-capped payload.
INSERT INTO ${database}.rejected_events (kafka_topic, kafka_partition, kafka_offset, reason, raw, raw_size, rejected_at)
SELECT kafka_topic, kafka_partition, kafka_offset, reason, payload, raw_size, now64(3, 'UTC')
FROM ${database}.ingest_staging
WHERE attempt_id = {attempt:String} AND kafka_topic = {topic:String} AND kafka_partition = {partition:UInt32}
  AND kafka_offset >= {start:UInt64} AND kafka_offset < {end:UInt64} AND reason != ''
ORDER BY kafka_offset
