-- What identity knows about each person that may place them in a cohort: a phone's country calling code
-- (codes are prefix-free, longest listed first) and an email domain. Shared identifiers are not the person's.
SELECT
    universal_id,
    arrayFirst(c -> c != '', arrayMap(p -> arrayFirst(c -> startsWith(p, concat('+', c)), {codes:Array(String)}),
                                      groupArrayIf(value, identifier_type = 'phone'))) AS calling_code,
    anyIf(splitByChar('@', value)[2], identifier_type = 'email') AS email_domain
FROM ${database}.identity_nodes FINAL
WHERE shared = 0
GROUP BY universal_id
