-- A run's owner map (filled into a per-run Join-engine table, dropped when the run ends): each raw identifier
-- that identity resolution accepted and did not mark shared -> its person, as a dense index p (1-based, in
-- universal_id order, so people come out sorted by universal_id) and the universal_id itself.
-- Keyed by a 64-bit hash of (type, raw value): the message-side lookup (messages.sql) is then one probe of
-- an integer hash table per identifier instead of a String join per identifier type.
INSERT INTO ${owners}
SELECT cityHash64(toString(i.identifier_type), i.raw_value) AS k,
       toUInt32(dense_rank() OVER (ORDER BY n.universal_id)) AS p,
       n.universal_id AS universal_id
FROM ${database}.identity_identifiers AS i FINAL
INNER JOIN (SELECT node_key, universal_id FROM ${database}.identity_nodes FINAL WHERE shared = 0) AS n
    ON i.node_key = n.node_key
WHERE i.reason = ''
