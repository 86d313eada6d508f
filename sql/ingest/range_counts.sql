-- What each staged range of the attempt holds: messages, rejects, valid events.
SELECT kafka_partition, count() AS messages, countIf(reason != '') AS rejected, countIf(reason = '') AS valid
FROM ${database}.ingest_staging
WHERE attempt_id = {attempt:String} AND kafka_topic = {topic:String} AND ${staged_here}
GROUP BY kafka_partition
