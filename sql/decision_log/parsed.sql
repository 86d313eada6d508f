-- The attempt's staged decision-log messages (sendflowr/decisions/records.py), parsed into their columns, each with
-- why it is rejected ('' when valid); also what rejects and counts read (sendflowr/ingest/sink.py, Sink.staged).
-- Behind the scratch guard (sql/ingest/staged_here.sql): the staging is in memory on one server.
-- Rendered by sendflowr/decisions/log_ingest.py from records.FIELDS: the message's JSON type, each column's length
-- in the JSON, the column names and the time columns.
SELECT attempt_id, kafka_topic, kafka_partition, kafka_offset, raw_size, reason,
       if(reason != '', substring(raw, 1, 4096), '') AS payload, columns
FROM
(
    SELECT attempt_id, kafka_topic, kafka_partition, kafka_offset, raw, length(raw) AS raw_size,
           raw_size <= 8388608 AND isValidJSON(raw) AND startsWith(trimLeft(raw), '{') AS is_object,
           JSONExtract(if(is_object, raw, '{}'), '${record_type}') AS doc,
           tupleElement(doc, 'rows') AS rows,
           tupleElement(doc, 'columns') AS columns,
           if(is_object, [${lengths}], []) AS lengths,
           multiIf(
               raw_size > 8388608, concat('payload: ', toString(raw_size), ' bytes exceeds 8388608'),
               NOT isValidJSON(raw), 'payload: invalid JSON',
               NOT is_object, 'record: expected a JSON object',
               tupleElement(doc, 'v') != 1, 'v: must be 1',
               rows = 0, 'rows: must be a positive count of decisions',
               arrayExists(l -> l != rows, lengths),
                   concat('columns.', [${names}][arrayFirstIndex(l -> l != rows, lengths)], ': missing or not ',
                          toString(rows), ' values'),
               NOT arrayAll(x -> match(x, '^sf_[0-9a-f]{16}$'), tupleElement(columns, 'universal_id')),
                   'columns.universal_id: not sf_ + 16 lowercase hex',
               NOT arrayAll(x -> x IN ('treatment', 'control'), tupleElement(columns, 'arm')),
                   'columns.arm: not treatment or control',
               NOT arrayAll(x -> x IN ('person', 'cohort', 'global'), tupleElement(columns, 'fallback_level')),
                   'columns.fallback_level: not person, cohort or global',
               NOT arrayAll(x -> x IN ('single', 'batch'), tupleElement(columns, 'endpoint')),
                   'columns.endpoint: not single or batch',
               NOT arrayAll(x -> x IN ('greedy', 'thompson', 'random'), tupleElement(columns, 'policy')),
                   'columns.policy: not greedy, thompson or random',
               NOT arrayAll(t -> t >= 946684800000 AND t < 7258118400000, arrayConcat(${times})),
                   'columns: a time outside [2000, 2200) (epoch milliseconds)',
               '') AS reason
    FROM ${database}.decision_log_staging
    WHERE attempt_id = {attempt:String} AND kafka_topic = {topic:String} AND ${staged_here}
)
