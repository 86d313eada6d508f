-- Send-time optimization (docs/TIMING.md): per-message engagement -> per-person curves over the 168 UTC hours
-- of the week -> decisions. Everything here is derived from `events` and the identity graph and can be rebuilt.

-- One row per successful materialization, written LAST: the commit marker readers trust. Rows of
-- timing_curves / timing_priors with a version above max(version) here belong to an unfinished run.
-- An evaluation commits a new version too (same curves, a freshly fitted calibration).
CREATE TABLE IF NOT EXISTS ${database}.timing_runs
(
    version         UInt64,
    run_id          String,
    materialized_at DateTime64(3, 'UTC'),
    people          UInt64,
    calibration     String,          -- sendflowr.timing.decide.Calibration.to_json()
    kind            LowCardinality(String) DEFAULT 'curves',  -- 'curves' | 'evaluation'
    people_written  UInt64 DEFAULT 0,  -- rows written by this run (incremental runs rewrite only changed people)
    metadata        String DEFAULT '{}'  -- JSON: signal-cleaning shares, parameters, timings
)
ENGINE = MergeTree
ORDER BY version;

-- Per-person curve: expected genuine engagement of a message delivered at each UTC hour of week (168 values).
-- evidence = weighted genuine engagements behind it; engagements = messages genuinely engaged with;
-- stats_hash fingerprints the person's sufficient statistics so an incremental run skips unchanged people.
CREATE TABLE IF NOT EXISTS ${database}.timing_curves
(
    universal_id    String,
    version         UInt64,
    curve           Array(Float32),
    evidence        Float32,
    engagements     UInt32,
    deliveries      UInt32,
    fallback_level  LowCardinality(String),  -- 'person' | 'cohort' | 'global'
    cohort          String,
    best_hour       UInt8,
    stats_hash      UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY universal_id;

-- Learned priors: the global curve (cohort = '') and one curve per cohort with enough support.
CREATE TABLE IF NOT EXISTS ${database}.timing_priors
(
    level           LowCardinality(String),  -- 'cohort' | 'global'
    cohort          String,
    version         UInt64,
    curve           Array(Float32),
    evidence        Float32,
    people          UInt64 DEFAULT 0
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (level, cohort);

-- Partial aggregates per message, folded in incrementally from new events (merges combine them; read with
-- GROUP BY message_id). Machine opens and scanner clicks are classified at read time, once all of a
-- message's events are known (late events arrive days later). Times are absolute: a message's delivery
-- event may land in a later batch than its opens.
CREATE TABLE IF NOT EXISTS ${database}.timing_messages
(
    message_id      String,
    email           SimpleAggregateFunction(max, String),
    klaviyo_id      SimpleAggregateFunction(max, String),
    phone           SimpleAggregateFunction(max, String),
    external_id     SimpleAggregateFunction(max, String),
    delivered_at    SimpleAggregateFunction(min, DateTime64(3, 'UTC')),  -- 2299-12-31 when not (yet) delivered
    first_event_at  SimpleAggregateFunction(min, DateTime64(3, 'UTC')),
    -- opens: (time, kind) with kind 0 = ordinary client, 1 = Apple proxy (UA/IP), 2 = flagged machine_open
    open_at         SimpleAggregateFunction(groupArrayArray, Array(DateTime64(3, 'UTC'))),
    open_kind       SimpleAggregateFunction(groupArrayArray, Array(UInt8)),
    -- clicks: (time, url hash, kind) with kind 0 = ordinary, 1 = scanner UA/IP, 2 = flagged bot_click
    click_at        SimpleAggregateFunction(groupArrayArray, Array(DateTime64(3, 'UTC'))),
    click_url       SimpleAggregateFunction(groupArrayArray, Array(UInt64)),
    click_kind      SimpleAggregateFunction(groupArrayArray, Array(UInt8)),
    events          SimpleAggregateFunction(sum, UInt64)
)
ENGINE = AggregatingMergeTree
ORDER BY message_id;

-- Incremental watermark: events of committed ingest ranges below end_offset are folded into timing_messages.
CREATE TABLE IF NOT EXISTS ${database}.timing_progress
(
    kafka_topic     LowCardinality(String),
    kafka_partition UInt32,
    end_offset      UInt64,
    run_id          String,
    at              DateTime64(6, 'UTC')
)
ENGINE = MergeTree
ORDER BY (kafka_topic, kafka_partition, end_offset);

-- Evaluation reports (JSON), one row per evaluation run, for history next to the Dagster metadata.
CREATE TABLE IF NOT EXISTS ${database}.timing_evaluations
(
    run_id          String,
    version         UInt64,
    evaluated_at    DateTime64(3, 'UTC'),
    report          String
)
ENGINE = MergeTree
ORDER BY evaluated_at;
