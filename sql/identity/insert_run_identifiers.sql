-- Every non-empty identifier of the events to stitch, one row per (event, identifier type): the run's only scan
-- of `events`. The events are those of committed ingest ranges beyond the identity watermark, as four parallel
-- arrays (end exclusive).
INSERT INTO ${database}.identity_run_identifiers
SELECT kafka_topic, kafka_partition, kafka_offset, occurred_at, ingested_at,
       id.1 AS identifier_type, id.2 AS raw_value
FROM ${database}.events
ARRAY JOIN [('email', email), ('klaviyo_id', klaviyo_id), ('phone', phone), ('external_id', external_id)] AS id
WHERE arrayExists((t, p, s, e) -> kafka_topic = t AND kafka_partition = p AND kafka_offset >= s AND kafka_offset < e,
                  {topics:Array(String)}, {partitions:Array(UInt32)}, {starts:Array(UInt64)}, {ends:Array(UInt64)})
  AND id.2 != ''
