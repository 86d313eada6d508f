-- Exploration (sendflowr/decisions/explore.py): which rule chose each served moment, and the exploration scale in
-- force, as sendflowr/decisions/records.py FIELDS. Rows from before this migration were greedy.
ALTER TABLE ${database}.decision_log
    ADD COLUMN IF NOT EXISTS policy LowCardinality(String) DEFAULT 'greedy' AFTER control_share,
    ADD COLUMN IF NOT EXISTS exploration Float32 DEFAULT 0 AFTER policy;
