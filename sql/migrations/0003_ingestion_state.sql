-- Bookkeeping of exactly-once ingestion (docs/INGESTION.md).

-- Every offset range a run planned, then the same range again once its rows are in `events`.
-- A 'planned' range without its 'committed' twin is replayed exactly by the next run.
CREATE TABLE IF NOT EXISTS ${database}.ingest_ranges
(
    kafka_topic     LowCardinality(String),
    kafka_partition UInt32,
    start_offset    UInt64,
    end_offset      UInt64,
    state           Enum8('planned' = 1, 'committed' = 2),
    run_id          String,
    messages        UInt64,
    inserted        UInt64,
    rejected        UInt64,
    duplicates      UInt64,
    recorded_at     DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = MergeTree
ORDER BY (kafka_topic, kafka_partition, start_offset, state);

-- Raw messages of the running attempt, one partition per attempt, dropped when it ends.
-- The DEFAULT columns parse and validate each message inside ClickHouse as it is inserted: Python only
-- moves (partition, offset, bytes). The rules mirror sendflowr/schemas/event.v1.json and
-- sendflowr/events.py; tests/test_ingest_validation.py holds both to the same verdicts.
CREATE TABLE IF NOT EXISTS ${database}.ingest_staging
(
    attempt_id      String,
    kafka_topic     LowCardinality(String),
    kafka_partition UInt32,
    kafka_offset    UInt64,
    raw             String,
    raw_size        UInt32 DEFAULT length(raw),
    is_object       UInt8 DEFAULT raw_size <= 65536 AND isValidUTF8(raw) AND isValidJSON(raw) AND JSONType(raw) = 'Object',
    top_keys        Array(String) DEFAULT if(is_object, JSONExtractKeys(raw), []),
    id_keys         Array(String) DEFAULT if(is_object AND JSONType(raw, 'identifiers') = 'Object', JSONExtractKeys(raw, 'identifiers'), []),
    event_id        String DEFAULT if(is_object, JSONExtractString(raw, 'event_id'), ''),
    event_type      String DEFAULT if(is_object, JSONExtractString(raw, 'event_type'), ''),
    occurred_text   String DEFAULT if(is_object, JSONExtractString(raw, 'occurred_at'), ''),
    occurred_at     Nullable(DateTime64(3, 'UTC')) DEFAULT if(match(occurred_text, '^\\d{4}-\\d{2}-\\d{2}T\\d{2}:\\d{2}:\\d{2}(\\.\\d{1,9})?(Z|[+-]\\d{2}:\\d{2})$'), parseDateTime64BestEffortOrNull(occurred_text, 3, 'UTC'), NULL),
    email           String DEFAULT if(is_object, JSONExtractString(raw, 'identifiers', 'email'), ''),
    klaviyo_id      String DEFAULT if(is_object, JSONExtractString(raw, 'identifiers', 'klaviyo_id'), ''),
    phone           String DEFAULT if(is_object, JSONExtractString(raw, 'identifiers', 'phone'), ''),
    external_id     String DEFAULT if(is_object, JSONExtractString(raw, 'identifiers', 'external_id'), ''),
    esp             String DEFAULT if(is_object, JSONExtractString(raw, 'esp'), ''),
    message_id      String DEFAULT if(is_object, JSONExtractString(raw, 'message_id'), ''),
    campaign_id     String DEFAULT if(is_object, JSONExtractString(raw, 'campaign_id'), ''),
    user_agent      String DEFAULT if(is_object, JSONExtractString(raw, 'user_agent'), ''),
    ip              String DEFAULT if(is_object, JSONExtractString(raw, 'ip'), ''),
    url             String DEFAULT if(is_object, JSONExtractString(raw, 'url'), ''),
    bounce_type     String DEFAULT if(is_object, JSONExtractString(raw, 'bounce_type'), ''),
    machine_open    UInt8 DEFAULT if(is_object, JSONExtractBool(raw, 'machine_open'), 0),
    bot_click       UInt8 DEFAULT if(is_object, JSONExtractBool(raw, 'bot_click'), 0),
    bad_string      String DEFAULT if(is_object, arrayFirst(
                        f -> JSONHas(raw, f.1) AND (JSONType(raw, f.1) != 'String' OR lengthUTF8(JSONExtractString(raw, f.1)) > f.2),
                        [('esp', 64), ('message_id', 256), ('campaign_id', 256), ('user_agent', 1024), ('ip', 64), ('url', 2048)]).1, ''),
    bad_identifier  String DEFAULT arrayFirst(
                        f -> has(id_keys, f.1) AND (JSONType(raw, 'identifiers', f.1) != 'String'
                             OR lengthUTF8(JSONExtractString(raw, 'identifiers', f.1)) NOT BETWEEN 1 AND f.2),
                        [('email', 320), ('klaviyo_id', 128), ('phone', 64), ('external_id', 256)]).1,
    reason          String DEFAULT multiIf(
        raw_size > 65536, concat('payload: ', toString(raw_size), ' bytes exceeds 65536'),
        NOT isValidUTF8(raw), 'payload: not valid UTF-8',
        NOT isValidJSON(raw), 'payload: invalid JSON',
        NOT is_object, 'event: expected a JSON object',
        notEmpty(arrayFilter(k -> k NOT IN ('schema_version', 'event_id', 'event_type', 'occurred_at', 'identifiers', 'esp', 'message_id', 'campaign_id', 'user_agent', 'ip', 'url', 'bounce_type', 'machine_open', 'bot_click'), top_keys)),
            concat('event: unknown field ', arrayFilter(k -> k NOT IN ('schema_version', 'event_id', 'event_type', 'occurred_at', 'identifiers', 'esp', 'message_id', 'campaign_id', 'user_agent', 'ip', 'url', 'bounce_type', 'machine_open', 'bot_click'), top_keys)[1]),
        NOT has(top_keys, 'event_id'), 'event_id: missing',
        JSONType(raw, 'event_id') != 'String' OR lengthUTF8(event_id) NOT BETWEEN 1 AND 256, 'event_id: must be a string of 1 to 256 characters',
        NOT has(top_keys, 'event_type'), 'event_type: missing',
        JSONType(raw, 'event_type') != 'String' OR event_type NOT IN ('sent', 'delivered', 'opened', 'clicked', 'bounced', 'unsubscribed', 'complained'), 'event_type: unknown',
        NOT has(top_keys, 'occurred_at'), 'occurred_at: missing',
        JSONType(raw, 'occurred_at') != 'String' OR occurred_at IS NULL, 'occurred_at: not an RFC 3339 time with an offset',
        occurred_at < toDateTime64('2000-01-01 00:00:00', 3, 'UTC'), 'occurred_at: before 2000-01-01',
        occurred_at > now64(3, 'UTC') + INTERVAL 5 MINUTE, 'occurred_at: more than 5 minutes in the future',
        NOT has(top_keys, 'identifiers'), 'identifiers: missing',
        JSONType(raw, 'identifiers') != 'Object', 'identifiers: must be an object',
        empty(id_keys), 'identifiers: needs at least one identifier',
        notEmpty(arrayFilter(k -> k NOT IN ('email', 'klaviyo_id', 'phone', 'external_id'), id_keys)),
            concat('identifiers: unknown type ', arrayFilter(k -> k NOT IN ('email', 'klaviyo_id', 'phone', 'external_id'), id_keys)[1]),
        bad_identifier != '', concat('identifiers.', bad_identifier, ': must be a non-empty string within its length limit'),
        bad_string != '', concat(bad_string, ': must be a string within its length limit'),
        has(top_keys, 'bounce_type') AND (JSONType(raw, 'bounce_type') != 'String' OR bounce_type NOT IN ('hard', 'soft', 'dropped', '')), 'bounce_type: unknown',
        has(top_keys, 'machine_open') AND JSONType(raw, 'machine_open') != 'Bool', 'machine_open: must be true or false',
        has(top_keys, 'bot_click') AND JSONType(raw, 'bot_click') != 'Bool', 'bot_click: must be true or false',
        has(top_keys, 'schema_version') AND NOT (JSONType(raw, 'schema_version') IN ('Int64', 'UInt64', 'Double') AND JSONExtractFloat(raw, 'schema_version') = 1), 'schema_version: must be 1',
        '')
)
ENGINE = MergeTree
PARTITION BY attempt_id
ORDER BY (kafka_topic, kafka_partition, kafka_offset);

-- One writer at a time: the earliest unexpired lease wins (see sendflowr/ingest/lease.py).
CREATE TABLE IF NOT EXISTS ${database}.ingest_leases
(
    kafka_topic     LowCardinality(String),
    holder          String,
    acquired_at     DateTime64(6, 'UTC') DEFAULT now64(6),
    expires_at      DateTime64(6, 'UTC'),
    released        UInt8 DEFAULT 0
)
ENGINE = MergeTree
ORDER BY (kafka_topic, acquired_at, holder)
TTL toDateTime(expires_at) + INTERVAL 1 DAY;

-- Event ids sorted for the dedup anti-join, with where each came from so that a replayed range can
-- exclude its own earlier attempt and rebuild byte-identical insert blocks.
CREATE TABLE IF NOT EXISTS ${database}.event_ids
(
    event_id        String,
    kafka_topic     LowCardinality(String),
    kafka_partition UInt32,
    kafka_offset    UInt64
)
ENGINE = MergeTree
ORDER BY event_id
SETTINGS non_replicated_deduplication_window = 10000;
