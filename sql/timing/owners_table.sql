-- The per-run owner map filled by owners.sql: an in-memory Join-engine table probed with joinGet (one integer
-- hash lookup per identifier) by messages.sql; the run drops it when it ends.
CREATE TABLE ${owners}
(
    k            UInt64,  -- cityHash64(identifier type, raw value)
    p            UInt32,  -- the person's dense index, 1-based, in universal_id order
    universal_id String
)
ENGINE = Join(ANY, LEFT, k)
SETTINGS persistent = 0
