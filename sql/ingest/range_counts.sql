-- What each staged range of the attempt holds: messages, rejects, valid messages.
-- Read from the sink's staged messages (sendflowr/ingest/sink.py, Sink.staged), behind the sink's scratch guard.
SELECT kafka_partition, count() AS messages, countIf(reason != '') AS rejected, countIf(reason = '') AS valid
FROM ${staging}
WHERE attempt_id = {attempt:String} AND kafka_topic = {topic:String} AND ${staged_here}
GROUP BY kafka_partition
