-- Messages of the attempt that broke the contract, with the reason and the payload capped at 4 KiB.
INSERT INTO ${database}.rejected_events (kafka_topic, kafka_partition, kafka_offset, reason, raw, raw_size, rejected_at)
SELECT kafka_topic, kafka_partition, kafka_offset, reason, payload, raw_size, now64(3, 'UTC')
FROM ${database}.ingest_staging
WHERE attempt_id = {attempt:String} AND kafka_topic = {topic:String} AND reason != '' AND ${staged_here}
ORDER BY kafka_partition, kafka_offset
