-- Region, step 4: region and boundary nodes with their seen times (ms), how many events carried them (the
-- conflict guard asks whether an identifier was seen without a given neighbour) and what the last run left for
-- them (universal_id '' = not in the graph yet), sorted by node_key.
SELECT s.node_key AS node_key,
       toInt8(indexOf([${identifier_types}], toString(s.identifier_type)) - 1) AS node_type,
       s.value AS value, s.first_seen AS first_seen, s.last_seen AS last_seen, s.first_ingested AS first_ingested,
       s.events AS events,
       r.boundary AS boundary,
       p.universal_id AS prev_uid, p.cluster AS prev_cluster, p.shared AS prev_shared,
       p.first_seen AS prev_first_seen, p.last_seen AS prev_last_seen
FROM (
    SELECT node_key, any(identifier_type) AS identifier_type, any(value) AS value,
           toUnixTimestamp64Milli(min(first_seen)) AS first_seen, toUnixTimestamp64Milli(max(last_seen)) AS last_seen,
           toUnixTimestamp64Milli(min(first_ingested)) AS first_ingested, toInt64(sum(events)) AS events
    FROM ${database}.identity_node_seen
    WHERE node_key IN (SELECT node_key FROM ${database}.identity_region)
    GROUP BY node_key
) AS s
INNER JOIN (SELECT node_key, min(boundary) AS boundary FROM ${database}.identity_region GROUP BY node_key) AS r
    ON s.node_key = r.node_key
LEFT JOIN (SELECT node_key, universal_id, cluster, shared, toUnixTimestamp64Milli(first_seen) AS first_seen,
                  toUnixTimestamp64Milli(last_seen) AS last_seen
           FROM ${database}.identity_nodes FINAL
           WHERE node_key IN (SELECT node_key FROM ${database}.identity_region)) AS p
    ON s.node_key = p.node_key
ORDER BY node_key
SETTINGS join_use_nulls = 0
