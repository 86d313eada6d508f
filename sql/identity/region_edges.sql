-- Region, step 3: every edge with an endpoint in the region (times in ms). Their other endpoints become the
-- boundary (inserted by Python).
SELECT src, dst, sum(events) AS events, toUnixTimestamp64Milli(min(first_seen)) AS first_seen
FROM ${database}.identity_edges
WHERE src IN (SELECT node_key FROM ${database}.identity_region WHERE boundary = 0)
   OR dst IN (SELECT node_key FROM ${database}.identity_region WHERE boundary = 0)
GROUP BY src, dst
