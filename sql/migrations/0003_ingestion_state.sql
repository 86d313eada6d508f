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
    valid           UInt64,
    rejected        UInt64,
    recorded_at     DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = MergeTree
ORDER BY (kafka_topic, kafka_partition, start_offset, state);

-- Raw messages of the running attempt, one partition per attempt, dropped when it ends.
-- The DEFAULT columns parse and validate each message inside ClickHouse as it is inserted: Python only
-- moves (partition, offset, bytes). Each message is parsed twice in all (once into raw key/value pairs
-- for the type checks, once into a typed tuple), not once per field. The rules mirror
-- sendflowr/schemas/event.v1.json and sendflowr/events.py; tests/test_ingest_validation.py holds both to
-- the same verdicts.
CREATE TABLE IF NOT EXISTS ${database}.ingest_staging
(
    attempt_id      String,
    kafka_topic     LowCardinality(String),
    kafka_partition UInt32,
    kafka_offset    UInt64,
    raw             String EPHEMERAL,
    raw_size        UInt32 DEFAULT length(raw),
    -- (key, raw JSON text of the value): a value's JSON kind is read off its first character. The parser
    -- validates UTF-8 and the whole document, so a non-empty result already proves a valid JSON object
    -- (it skips a leading byte-order mark, which JSON forbids: such payloads take the slow path).
    kv              Array(Tuple(String, String)) EPHEMERAL if(raw_size <= 65536 AND NOT startsWith(raw, '\xEF\xBB\xBF'),
                        JSONExtractKeysAndValuesRaw(raw), []),
    is_object       UInt8 EPHEMERAL notEmpty(kv) OR (raw_size <= 65536 AND isValidUTF8(raw) AND isValidJSON(raw)
                        AND match(raw, '^\\s*\\{')),
    top_keys        Array(String) EPHEMERAL arrayMap(x -> x.1, kv),
    -- first top-level field that is unknown or of the wrong JSON kind (one pass over the pairs)
    bad_field       Tuple(String, String) EPHEMERAL arrayFirst(x -> NOT multiIf(
                        x.1 IN ('event_id', 'event_type', 'occurred_at', 'esp', 'message_id', 'campaign_id', 'user_agent',
                                'ip', 'url', 'bounce_type'), startsWith(x.2, '"'),
                        x.1 IN ('machine_open', 'bot_click'), x.2 IN ('true', 'false'),
                        x.1 = 'identifiers', startsWith(x.2, '{'),
                        x.1 = 'schema_version', match(x.2, '^-?[0-9]'),
                        0), kv),
    id_kv           Array(Tuple(String, String)) EPHEMERAL if(bad_field.1 = '' AND has(top_keys, 'identifiers'),
                        JSONExtractKeysAndValuesRaw(raw, 'identifiers'), []),
    bad_id          String EPHEMERAL arrayFirst(x -> x.1 NOT IN ('email', 'klaviyo_id', 'phone', 'external_id')
                        OR NOT startsWith(x.2, '"') OR x.2 = '""', id_kv).1,
    fields          Tuple(event_id String, event_type String, occurred_at String, esp String, message_id String,
                          campaign_id String, user_agent String, ip String, url String, bounce_type String,
                          machine_open Bool, bot_click Bool, schema_version Float64,
                          identifiers Tuple(email String, klaviyo_id String, phone String, external_id String))
                    EPHEMERAL JSONExtract(if(is_object, raw, '{}'),
                        'Tuple(event_id String, event_type String, occurred_at String, esp String, message_id String, campaign_id String, user_agent String, ip String, url String, bounce_type String, machine_open Bool, bot_click Bool, schema_version Float64, identifiers Tuple(email String, klaviyo_id String, phone String, external_id String))'),
    event_id        String DEFAULT tupleElement(fields, 'event_id'),
    event_type      String DEFAULT tupleElement(fields, 'event_type'),
    occurred_at     Nullable(DateTime64(3, 'UTC')) DEFAULT if(match(tupleElement(fields, 'occurred_at'), '^\\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\\d|3[01])T([01]\\d|2[0-3]):[0-5]\\d:[0-5]\\d(\\.\\d{1,9})?(Z|[+-]([01]\\d|2[0-3]):[0-5]\\d)$'),
                        parseDateTime64BestEffortOrNull(tupleElement(fields, 'occurred_at'), 3, 'UTC'), NULL),
    email           String DEFAULT tupleElement(tupleElement(fields, 'identifiers'), 'email'),
    klaviyo_id      String DEFAULT tupleElement(tupleElement(fields, 'identifiers'), 'klaviyo_id'),
    phone           String DEFAULT tupleElement(tupleElement(fields, 'identifiers'), 'phone'),
    external_id     String DEFAULT tupleElement(tupleElement(fields, 'identifiers'), 'external_id'),
    esp             String DEFAULT tupleElement(fields, 'esp'),
    message_id      String DEFAULT tupleElement(fields, 'message_id'),
    campaign_id     String DEFAULT tupleElement(fields, 'campaign_id'),
    user_agent      String DEFAULT tupleElement(fields, 'user_agent'),
    ip              String DEFAULT tupleElement(fields, 'ip'),
    url             String DEFAULT tupleElement(fields, 'url'),
    bounce_type     String DEFAULT tupleElement(fields, 'bounce_type'),
    machine_open    UInt8 DEFAULT tupleElement(fields, 'machine_open'),
    bot_click       UInt8 DEFAULT tupleElement(fields, 'bot_click'),
    reason          String DEFAULT multiIf(
        raw_size > 65536, concat('payload: ', toString(raw_size), ' bytes exceeds 65536'),
        empty(kv) AND NOT isValidUTF8(raw), 'payload: not valid UTF-8',
        empty(kv) AND NOT isValidJSON(raw), 'payload: invalid JSON',
        NOT is_object, 'event: expected a JSON object',
        length(arrayDistinct(top_keys)) != length(top_keys), 'event: duplicate field',
        has(top_keys, ''), 'event: unknown field ""',
        bad_field.1 != '' AND bad_field.1 NOT IN ('schema_version', 'event_id', 'event_type', 'occurred_at', 'identifiers',
            'esp', 'message_id', 'campaign_id', 'user_agent', 'ip', 'url', 'bounce_type', 'machine_open', 'bot_click'),
            concat('event: unknown field ', bad_field.1),
        bad_field.1 != '', concat(bad_field.1, ': wrong JSON type'),
        NOT has(top_keys, 'event_id'), 'event_id: missing',
        NOT has(top_keys, 'event_type'), 'event_type: missing',
        NOT has(top_keys, 'occurred_at'), 'occurred_at: missing',
        NOT has(top_keys, 'identifiers'), 'identifiers: missing',
        lengthUTF8(event_id) NOT BETWEEN 1 AND 256, 'event_id: must be 1 to 256 characters',
        event_type NOT IN ('sent', 'delivered', 'opened', 'clicked', 'bounced', 'unsubscribed', 'complained'),
            'event_type: unknown',
        occurred_at IS NULL, 'occurred_at: not an RFC 3339 time with an offset',
        occurred_at < toDateTime64('2000-01-01 00:00:00', 3, 'UTC'), 'occurred_at: before 2000-01-01',
        occurred_at > now64(3, 'UTC') + INTERVAL 5 MINUTE, 'occurred_at: more than 5 minutes in the future',
        empty(id_kv), 'identifiers: needs at least one identifier',
        length(arrayDistinct(arrayMap(x -> x.1, id_kv))) != length(id_kv), 'identifiers: duplicate type',
        has(arrayMap(x -> x.1, id_kv), ''), 'identifiers: unknown type ""',
        bad_id != '' AND bad_id NOT IN ('email', 'klaviyo_id', 'phone', 'external_id'), concat('identifiers: unknown type ', bad_id),
        bad_id != '', concat('identifiers.', bad_id, ': must be a non-empty string'),
        lengthUTF8(email) > 320, 'identifiers.email: longer than 320 characters',
        lengthUTF8(klaviyo_id) > 128, 'identifiers.klaviyo_id: longer than 128 characters',
        lengthUTF8(phone) > 64, 'identifiers.phone: longer than 64 characters',
        lengthUTF8(external_id) > 256, 'identifiers.external_id: longer than 256 characters',
        lengthUTF8(esp) > 64, 'esp: longer than 64 characters',
        lengthUTF8(message_id) > 256, 'message_id: longer than 256 characters',
        lengthUTF8(campaign_id) > 256, 'campaign_id: longer than 256 characters',
        lengthUTF8(user_agent) > 1024, 'user_agent: longer than 1024 characters',
        lengthUTF8(ip) > 64, 'ip: longer than 64 characters',
        lengthUTF8(url) > 2048, 'url: longer than 2048 characters',
        bounce_type NOT IN ('hard', 'soft', 'dropped', ''), 'bounce_type: unknown',
        has(top_keys, 'schema_version') AND tupleElement(fields, 'schema_version') != 1, 'schema_version: must be 1',
        ''),
    payload         String DEFAULT if(reason != '', substring(raw, 1, 4096), '')
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
