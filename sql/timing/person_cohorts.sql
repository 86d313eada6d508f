-- Each cohort name (phone calling code, else email domain, else '') with the owner-map indexes of its people
-- (person_features.sql joined to the run's owner map), one row per name, sorted by name.
SELECT label, groupArray(o.p) AS ps
FROM
(
    SELECT universal_id,
           multiIf(calling_code != '', concat({phone:String}, calling_code),
                   email_domain != '', concat({email:String}, email_domain), '') AS label
    FROM (${features})
) AS f
INNER JOIN (SELECT p, any(universal_id) AS universal_id FROM ${owners} GROUP BY p) AS o
    ON o.universal_id = f.universal_id
GROUP BY label
ORDER BY label
