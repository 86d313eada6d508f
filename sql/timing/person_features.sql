-- What identity knows about each person that may place them in a cohort: a phone's country calling code
-- (codes are prefix-free, longest listed first) and an email domain. Shared identifiers are not the person's.
-- ${people}: '' for everyone, or a condition on universal_id (an incremental run asks for the people it changed).
SELECT
    universal_id,
    arrayFirst(c -> c != '', arrayMap(p -> arrayFirst(c -> startsWith(p, concat('+', c)), {codes:Array(String)}),
                                      groupArrayIf(value, identifier_type = 'phone'))) AS calling_code,
    anyIf(splitByChar('@', value)[2], identifier_type = 'email') AS email_domain
FROM ${database}.identity_nodes FINAL
WHERE shared = 0 ${people}
GROUP BY universal_id
