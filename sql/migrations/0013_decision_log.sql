-- The decision log (docs/EVALUATION.md): every decision the API served, ingested exactly once from its Kafka topic
-- by the same mechanism as events (sendflowr/ingest: lease, planned ranges, dedup tokens, committed ranges).

-- Ranges of every ingested topic, by the sink that loads it (sendflowr/ingest/sink.py): downstream assets read the
-- committed ranges of 'events' only (plan.committed_ends). Ranges recorded before this migration are events.
ALTER TABLE ${database}.ingest_ranges ADD COLUMN IF NOT EXISTS sink LowCardinality(String) DEFAULT 'events' AFTER kafka_topic;

-- One row per served decision; columns as sendflowr/decisions/records.py FIELDS (a test holds the two equal),
-- plus where the row came from (kafka_row: its position in the message, which carries up to 500 decisions).
CREATE TABLE IF NOT EXISTS ${database}.decision_log
(
    decision_id               String,
    decided_at                DateTime64(3, 'UTC'),
    endpoint                  LowCardinality(String),
    universal_id              String,
    known_person              UInt8,
    campaign_id               String,
    message_id                String,
    send_after                DateTime64(3, 'UTC'),
    send_before               DateTime64(3, 'UTC'),
    latency_seconds           Float64,
    trigger_at                DateTime64(3, 'UTC'),
    delivery_at               DateTime64(3, 'UTC'),
    arm                       LowCardinality(String),
    model_delivery_at         DateTime64(3, 'UTC'),
    confidence                Float32,
    expected_engagement       Float32,
    model_expected_engagement Float32,
    fallback_level            LowCardinality(String),
    evidence                  Float32,
    cohort                    LowCardinality(String),
    snapshot_version          LowCardinality(String),
    control_share             Float32,
    kafka_topic               LowCardinality(String),
    kafka_partition           UInt32,
    kafka_offset              UInt64,
    kafka_row                 UInt32,
    ingested_at               DateTime64(3, 'UTC') DEFAULT now64(3, 'UTC')
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(decided_at)
ORDER BY (universal_id, decided_at, decision_id)
SETTINGS non_replicated_deduplication_window = 10000;

-- Raw messages of the running decision-log attempt (in memory like ingest_staging, 0012), deleted when it ends;
-- sql/decision_log/parsed.sql parses and validates them.
CREATE TABLE IF NOT EXISTS ${database}.decision_log_staging
(
    attempt_id      String,
    kafka_topic     LowCardinality(String),
    kafka_partition UInt32,
    kafka_offset    UInt64,
    raw             String
)
ENGINE = Memory;
