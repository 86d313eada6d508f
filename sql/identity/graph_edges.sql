-- All identity edges, one row per pair, sorted (times in ms).
SELECT src, dst, sum(events) AS events, toUnixTimestamp64Milli(min(first_seen)) AS first_seen
FROM ${database}.identity_edges
GROUP BY src, dst
ORDER BY src, dst
