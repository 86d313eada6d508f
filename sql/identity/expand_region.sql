-- Region, step 2: every identifier of a pre-guard cluster holding a touched identifier (the whole cluster is
-- recomputed; other clusters cannot change).
INSERT INTO ${database}.identity_region (node_key, boundary)
SELECT node_key, 0
FROM ${database}.identity_nodes FINAL
WHERE cluster IN (SELECT cluster FROM ${database}.identity_nodes FINAL
                  WHERE node_key IN (SELECT node_key FROM ${database}.identity_region))
