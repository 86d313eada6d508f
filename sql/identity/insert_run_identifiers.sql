-- The run's only scan of `events`, aggregated as it is read (identity_run_identifiers in migration 0016): every
-- distinct non-empty identifier, every distinct pair of identifiers one event carries, and the count of the events
-- with any identifier. The events are those of committed ingest ranges beyond the identity watermark, given as four
-- parallel arrays (end exclusive). Nothing is held per event: an event's identifiers are its own columns, so its
-- pairs are formed on its row (a type appears once an event, so the pairs of one event are distinct).
-- Its GROUP BY holds one state per distinct identifier and pair (~0.6 KB each in the engine): past 1 GB it spills to
-- disk, so the endpoint's peak stays flat with the people (2M people: 3.6 -> 1.7 GB, ~10% slower; docs/SCALING.md).
INSERT INTO ${database}.identity_run_identifiers
SELECT r.1 AS identifier_type, r.2 AS raw_value, r.3 AS other_type, r.4 AS other_value,
       min(occurred_at), max(occurred_at), min(ingested_at), count()
FROM (
    SELECT occurred_at, ingested_at,
           arrayFilter(id -> id.2 != '', arrayZip([${identifier_types}], [${identifier_columns}])) AS ids
    FROM (
        SELECT occurred_at, ingested_at, ${identifier_columns},
               indexOf(arrayZip({topics:Array(String)}, {partitions:Array(UInt32)}),
                       (toString(kafka_topic), kafka_partition)) AS slot
        FROM ${database}.events
        WHERE slot > 0 AND kafka_offset >= {starts:Array(UInt64)}[slot] AND kafka_offset < {ends:Array(UInt64)}[slot]
    )
)
ARRAY JOIN arrayConcat(  -- no row for an event without identifiers (a WHERE here would be read before the offsets)
    if(empty(ids), [], [('', '', '', '')]),              -- the event itself (counted)
    arrayMap(a -> (a.1, a.2, '', ''), ids),              -- each identifier
    arrayFlatten(arrayMap((a, i) -> arrayMap(b -> (a.1, a.2, b.1, b.2), arraySlice(ids, i + 1)),
                          ids, arrayEnumerate(ids)))     -- each pair, in column order
) AS r
GROUP BY identifier_type, raw_value, other_type, other_value
SETTINGS max_bytes_before_external_group_by = 1000000000
