-- Messages of the attempt that broke their topic's contract, with the reason and the payload capped at 4 KiB.
-- Read from the sink's staged messages (sendflowr/ingest/sink.py, Sink.staged), behind the sink's scratch guard.
INSERT INTO ${database}.rejected_events (kafka_topic, kafka_partition, kafka_offset, reason, raw, raw_size, rejected_at)
SELECT kafka_topic, kafka_partition, kafka_offset, reason, payload, raw_size, now64(3, 'UTC')
FROM ${staging}
WHERE attempt_id = {attempt:String} AND kafka_topic = {topic:String} AND reason != '' AND ${staged_here}
ORDER BY kafka_partition, kafka_offset
