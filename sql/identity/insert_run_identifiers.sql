-- Every non-empty identifier of the events to stitch, one row per (event, identifier type): the run's only scan
-- of `events`. The events are those of committed ingest ranges beyond the identity watermark, given as four
-- parallel arrays (end exclusive); rows are filtered before the ARRAY JOIN.
INSERT INTO ${database}.identity_run_identifiers
SELECT kafka_topic, kafka_partition, kafka_offset, occurred_at, ingested_at, id.1 AS identifier_type, id.2 AS raw_value
FROM (
    SELECT kafka_topic, kafka_partition, kafka_offset, occurred_at, ingested_at, ${identifier_columns},
           indexOf(arrayZip({topics:Array(String)}, {partitions:Array(UInt32)}),
                   (toString(kafka_topic), kafka_partition)) AS slot
    FROM ${database}.events
    WHERE slot > 0 AND kafka_offset >= {starts:Array(UInt64)}[slot] AND kafka_offset < {ends:Array(UInt64)}[slot]
)
ARRAY JOIN arrayZip([${identifier_types}], [${identifier_columns}]) AS id
WHERE id.2 != ''
