-- Distinct raw identifiers of the new events that were never normalized (Python normalizes only these).
SELECT DISTINCT identifier_type, raw_value
FROM (${new_identifiers})
WHERE (identifier_type, raw_value) NOT IN (SELECT toString(identifier_type), raw_value
                                           FROM ${database}.identity_identifiers)
ORDER BY identifier_type, raw_value
