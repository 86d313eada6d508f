-- Region, step 5: the latest audited guard verdict of the region's edges (no row = accepted).
SELECT src, dst, argMax(reason, at) AS reason
FROM ${database}.identity_blocked
WHERE kind = 'edge' AND (src IN (SELECT node_key FROM ${database}.identity_region WHERE boundary = 0)
                         OR dst IN (SELECT node_key FROM ${database}.identity_region WHERE boundary = 0))
GROUP BY src, dst
