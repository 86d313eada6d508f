-- The run's raw identifiers -> node keys (identity_run_nodes) as an in-memory Join-engine table, probed with
-- joinGet by insert_run_edges.sql: one integer hash lookup per identifier of a pair, instead of sorting the pairs
-- twice by their string values (2M people: 14.0 -> ~3 s of the endpoint's CPU, docs/SCALING.md). Keyed by a
-- seeded 64-bit hash of (type, raw value); the run picks a seed under which its identifiers' hashes are distinct
-- (run_keys_distinct.sql), so a lookup never returns another identifier's node. The run creates it (one run at a
-- time: the identity lease) and drops it once the edges are written.
CREATE TABLE IF NOT EXISTS ${database}.identity_run_keys
(
    h        UInt64,  -- cityHash64(seed, identifier_type, raw_value)
    node_key UInt64
)
ENGINE = Join(ANY, LEFT, h)
SETTINGS persistent = 0
