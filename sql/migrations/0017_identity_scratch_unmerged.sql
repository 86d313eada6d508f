-- The identity run's scratch tables are never merged. Each run truncates them and reads each a few times within
-- seconds of writing it, so a merge of their parts is work nobody reads: at 2M people the engine spent ~15 s of
-- CPU (of ~120 s) merging the run's distinct identifiers and pairs while the run's next statements waited on the
-- same two cores (docs/SCALING.md). A part is only merged when the sizes to merge fit this limit: 1 byte, never.
-- A run writes one part per million rows or so (~60 at 10M people), far below the engine's too-many-parts limits.
ALTER TABLE ${database}.identity_run_identifiers MODIFY SETTING max_bytes_to_merge_at_max_space_in_pool = 1;
ALTER TABLE ${database}.identity_run_nodes MODIFY SETTING max_bytes_to_merge_at_max_space_in_pool = 1;
ALTER TABLE ${database}.identity_run_edges MODIFY SETTING max_bytes_to_merge_at_max_space_in_pool = 1;
