-- All identity nodes for the in-memory graph, sorted by node_key (times in ms).
SELECT node_key,
       toInt8(indexOf([${identifier_types}], toString(any(identifier_type))) - 1) AS node_type,
       any(value) AS value,
       toUnixTimestamp64Milli(min(first_seen)) AS first_seen,
       toUnixTimestamp64Milli(max(last_seen)) AS last_seen,
       toUnixTimestamp64Milli(min(first_ingested)) AS first_ingested,
       toInt64(sum(events)) AS events
FROM ${database}.identity_node_seen
GROUP BY node_key
ORDER BY node_key
