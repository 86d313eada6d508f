-- Engagement events, one row per distinct event_id.
-- Sorted by person_key (the event's first identifier, lower-cased) then time, so a per-person time
-- scan reads one contiguous range; partitioned by month so TTL and backfills drop whole parts.
-- non_replicated_deduplication_window lets a retried insert with the same deduplication token be
-- dropped by the engine (exactly-once ingestion, see docs/INGESTION.md).
CREATE TABLE IF NOT EXISTS ${database}.events
(
    event_id        String,
    event_type      LowCardinality(String),
    occurred_at     DateTime64(3, 'UTC'),
    person_key      String,
    email           String,
    klaviyo_id      String,
    phone           String,
    external_id     String,
    esp             LowCardinality(String),
    message_id      String,
    campaign_id     String,
    user_agent      String,
    ip              String,
    url             String,
    bounce_type     LowCardinality(String),
    machine_open    UInt8,
    bot_click       UInt8,
    schema_version  UInt8,
    kafka_topic     LowCardinality(String),
    kafka_partition UInt32,
    kafka_offset    UInt64,
    ingested_at     DateTime64(3, 'UTC') DEFAULT now64(3, 'UTC')
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (person_key, occurred_at, event_id)
SETTINGS non_replicated_deduplication_window = 10000;
