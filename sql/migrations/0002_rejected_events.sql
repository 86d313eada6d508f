-- Messages that broke the event contract: kept with the reason and where they came from, never dropped.
CREATE TABLE IF NOT EXISTS ${database}.rejected_events
(
    kafka_topic     LowCardinality(String),
    kafka_partition UInt32,
    kafka_offset    UInt64,
    reason          String,
    raw             String,
    raw_size        UInt32,
    rejected_at     DateTime64(3, 'UTC')
)
ENGINE = MergeTree
ORDER BY (kafka_topic, kafka_partition, kafka_offset)
SETTINGS non_replicated_deduplication_window = 10000;
