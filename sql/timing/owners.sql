-- A run's owner map (filled into a per-run Join-engine table, dropped when the run ends): each raw identifier
-- that identity resolution accepted and did not mark shared -> its person, as a dense index p (1-based, in
-- universal_id order, so people come out sorted by universal_id) and the universal_id itself.
-- Keyed by a 64-bit hash of (type, raw value): the message-side lookup (message_outputs.sql) is then one probe of
-- an integer hash table per identifier instead of a String join per identifier type. The restrict placeholder: nothing, or a
-- condition keeping only the identifiers an incremental run's messages carry (run.owner_map).
INSERT INTO ${owners}
SELECT cityHash64(identifier_type, raw_value) AS k,
       toUInt32(dense_rank() OVER (ORDER BY universal_id)) AS p,
       universal_id
FROM (${sql:identity/identifier_owners.sql})
WHERE shared = 0${restrict}
