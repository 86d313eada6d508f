-- Distinct raw identifiers of the new events that were never normalized (Python normalizes only these). The
-- known set is read through identity_identifiers' primary key, restricted to the run's values.
SELECT toString(identifier_type) AS identifier_type, raw_value
FROM ${database}.identity_run_identifiers
WHERE other_type = '' AND identifier_type != '' AND (identifier_type, raw_value) NOT IN (
    SELECT identifier_type, raw_value FROM ${database}.identity_identifiers
    WHERE (identifier_type, raw_value) IN (
        SELECT identifier_type, raw_value FROM ${database}.identity_run_identifiers WHERE other_type = ''))
ORDER BY identifier_type, raw_value
