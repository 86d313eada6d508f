-- Universal ids that stopped being used because their person merged into another (old -> new), oldest first.
SELECT old_id, new_id
FROM ${database}.identity_merge_log
ORDER BY merged_at, old_id
