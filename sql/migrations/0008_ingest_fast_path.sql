-- Staging without re-parsing every message three times (docs/INGESTION.md, "Staging").
-- Raw messages are inserted into `ingest_inbox` (engine Null: nothing is stored). `ingest_certify` parses
-- each message once into typed, nullable fields and certifies the common case: a compact JSON object of
-- known keys whose strings hold no escapes, each key once, every rule of the contract met. Certified rows
-- go to `ingest_staging` with their fields filled in (`ingest_fast`); every other row goes to
-- `ingest_staging` as raw bytes only (`ingest_slow`), where the DEFAULT columns of 0003 validate it in
-- full and give the reason. A certified row always gets the values the DEFAULT columns would compute
-- (tests/test_ingest_fast_path.py holds the two paths to the same rows).
CREATE TABLE IF NOT EXISTS ${database}.ingest_inbox
(
    attempt_id      String,
    kafka_topic     LowCardinality(String),
    kafka_partition UInt32,
    kafka_offset    UInt64,
    raw             String
)
ENGINE = Null;

CREATE TABLE IF NOT EXISTS ${database}.ingest_certified
(
    attempt_id      String,
    kafka_topic     LowCardinality(String),
    kafka_partition UInt32,
    kafka_offset    UInt64,
    raw             String,
    certified       UInt8,
    raw_size        UInt32,
    event_id        String,
    event_type      String,
    occurred_at     Nullable(DateTime64(3, 'UTC')),
    email           String,
    klaviyo_id      String,
    phone           String,
    external_id     String,
    esp             String,
    message_id      String,
    campaign_id     String,
    user_agent      String,
    ip              String,
    url             String,
    bounce_type     String,
    machine_open    UInt8,
    bot_click       UInt8
)
ENGINE = Null;

-- The regular expression admits only objects of known members with the right JSON kind: strings without
-- escapes or control characters, booleans, schema_version 1, and an identifiers object of known, non-empty
-- strings. With no quote inside a string, '":' ends a key or (as ':":') opens a value that starts with ':',
-- so counting keys that way catches a repeated key: the typed extraction sees each key once. Invalid UTF-8 fails the parse (all fields NULL), so it is never certified.
CREATE MATERIALIZED VIEW IF NOT EXISTS ${database}.ingest_certify TO ${database}.ingest_certified AS
WITH
    JSONExtract(raw, 'Tuple(event_id Nullable(String), event_type Nullable(String), occurred_at Nullable(String), esp Nullable(String), message_id Nullable(String), campaign_id Nullable(String), user_agent Nullable(String), ip Nullable(String), url Nullable(String), bounce_type Nullable(String), machine_open Nullable(Bool), bot_click Nullable(Bool), schema_version Nullable(Float64), identifiers Tuple(email Nullable(String), klaviyo_id Nullable(String), phone Nullable(String), external_id Nullable(String)))') AS f,
    tupleElement(f, 'identifiers') AS ids,
    isNotNull(tupleElement(ids, 'email')) + isNotNull(tupleElement(ids, 'klaviyo_id'))
        + isNotNull(tupleElement(ids, 'phone')) + isNotNull(tupleElement(ids, 'external_id')) AS id_count,
    isNotNull(tupleElement(f, 'event_id')) + isNotNull(tupleElement(f, 'event_type'))
        + isNotNull(tupleElement(f, 'occurred_at')) + isNotNull(tupleElement(f, 'esp'))
        + isNotNull(tupleElement(f, 'message_id')) + isNotNull(tupleElement(f, 'campaign_id'))
        + isNotNull(tupleElement(f, 'user_agent')) + isNotNull(tupleElement(f, 'ip')) + isNotNull(tupleElement(f, 'url'))
        + isNotNull(tupleElement(f, 'bounce_type')) + isNotNull(tupleElement(f, 'machine_open'))
        + isNotNull(tupleElement(f, 'bot_click')) + isNotNull(tupleElement(f, 'schema_version')) AS top_count,
    ifNull(tupleElement(f, 'occurred_at'), '') AS occurred_text,
    if(match(occurred_text, '^\\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\\d|3[01])T([01]\\d|2[0-3]):[0-5]\\d:[0-5]\\d(\\.\\d{1,9})?(Z|[+-]([01]\\d|2[0-3]):[0-5]\\d)$'),
       parseDateTime64BestEffortOrNull(occurred_text, 3, 'UTC'), NULL) AS occurred
SELECT
    attempt_id, kafka_topic, kafka_partition, kafka_offset, raw,
    length(raw) AS raw_size,
    ifNull(tupleElement(f, 'event_id'), '') AS event_id,
    ifNull(tupleElement(f, 'event_type'), '') AS event_type,
    occurred AS occurred_at,
    ifNull(tupleElement(ids, 'email'), '') AS email,
    ifNull(tupleElement(ids, 'klaviyo_id'), '') AS klaviyo_id,
    ifNull(tupleElement(ids, 'phone'), '') AS phone,
    ifNull(tupleElement(ids, 'external_id'), '') AS external_id,
    ifNull(tupleElement(f, 'esp'), '') AS esp,
    ifNull(tupleElement(f, 'message_id'), '') AS message_id,
    ifNull(tupleElement(f, 'campaign_id'), '') AS campaign_id,
    ifNull(tupleElement(f, 'user_agent'), '') AS user_agent,
    ifNull(tupleElement(f, 'ip'), '') AS ip,
    ifNull(tupleElement(f, 'url'), '') AS url,
    ifNull(tupleElement(f, 'bounce_type'), '') AS bounce_type,
    ifNull(tupleElement(f, 'machine_open'), false) AS machine_open,
    ifNull(tupleElement(f, 'bot_click'), false) AS bot_click,
    raw_size <= 65536
    AND id_count >= 1
    AND countSubstrings(raw, '":') - countSubstrings(raw, ':":') = top_count + 1 + id_count
    AND match(raw, '^\\{(?:"(?:event_id|event_type|occurred_at|esp|message_id|campaign_id|user_agent|ip|url|bounce_type)":"[^"\\\\\\x00-\\x1f]*"|"(?:machine_open|bot_click)":(?:true|false)|"schema_version":1|"identifiers":\\{"(?:email|klaviyo_id|phone|external_id)":"[^"\\\\\\x00-\\x1f]+"(?:,"(?:email|klaviyo_id|phone|external_id)":"[^"\\\\\\x00-\\x1f]+")*\\})(?:,(?:"(?:event_id|event_type|occurred_at|esp|message_id|campaign_id|user_agent|ip|url|bounce_type)":"[^"\\\\\\x00-\\x1f]*"|"(?:machine_open|bot_click)":(?:true|false)|"schema_version":1|"identifiers":\\{"(?:email|klaviyo_id|phone|external_id)":"[^"\\\\\\x00-\\x1f]+"(?:,"(?:email|klaviyo_id|phone|external_id)":"[^"\\\\\\x00-\\x1f]+")*\\}))*\\}$')
    AND lengthUTF8(event_id) BETWEEN 1 AND 256
    AND event_type IN ('sent', 'delivered', 'opened', 'clicked', 'bounced', 'unsubscribed', 'complained')
    AND occurred IS NOT NULL
    AND occurred >= toDateTime64('2000-01-01 00:00:00', 3, 'UTC')
    AND occurred <= now64(3, 'UTC') + INTERVAL 5 MINUTE
    AND lengthUTF8(email) <= 320 AND lengthUTF8(klaviyo_id) <= 128 AND lengthUTF8(phone) <= 64
    AND lengthUTF8(external_id) <= 256 AND lengthUTF8(esp) <= 64 AND lengthUTF8(message_id) <= 256
    AND lengthUTF8(campaign_id) <= 256 AND lengthUTF8(user_agent) <= 1024 AND lengthUTF8(ip) <= 64
    AND lengthUTF8(url) <= 2048
    AND bounce_type IN ('hard', 'soft', 'dropped', '') AS certified
FROM ${database}.ingest_inbox;

CREATE MATERIALIZED VIEW IF NOT EXISTS ${database}.ingest_fast TO ${database}.ingest_staging AS
SELECT attempt_id, kafka_topic, kafka_partition, kafka_offset, raw_size, event_id, event_type, occurred_at, email,
       klaviyo_id, phone, external_id, esp, message_id, campaign_id, user_agent, ip, url, bounce_type, machine_open,
       bot_click, '' AS reason, '' AS payload
FROM ${database}.ingest_certified
WHERE certified;

CREATE MATERIALIZED VIEW IF NOT EXISTS ${database}.ingest_slow TO ${database}.ingest_staging AS
SELECT attempt_id, kafka_topic, kafka_partition, kafka_offset, raw
FROM ${database}.ingest_certified
WHERE NOT certified;
