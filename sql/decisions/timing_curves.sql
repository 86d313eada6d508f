-- Each person's newest committed timing row among versions (since, v] (committed: named by a timing_runs row,
-- as sendflowr/timing/versions.py says) as the API maps it
-- (sendflowr/decisions/timing_part.py; since = 0 reads everything, a higher one only what changed after a part the
-- API already holds), in universal_id order (the numeric order of the ids). The 168 values travel quantized per
-- person: round(value / the curve's peak * {levels}) as UInt16, the peak beside them; the API multiplies back
-- (docs/SCALING.md, "API memory"). `finite` is 0 for a curve holding a value that is not finite or below 0: the API
-- keeps it unusable, as the decision rule would find it. LIMIT 1 BY reads each person's rows in the table's own
-- order; an argMax of the curve arrays costs over ten times more server time here.
SELECT
    universal_id,
    hours,
    peak,
    finite,
    arrayMap(x -> toUInt16(round(x * factor)), if(finite, curve, arrayWithConstant(hours, toFloat32(0)))) AS codes,
    evidence,
    engagements,
    fallback_level,
    cohort,
    best_hour
FROM
(
    SELECT
        universal_id,
        curve,
        length(curve) AS hours,
        arrayMax(curve) AS peak,
        arrayAll(x -> isFinite(x) AND x >= 0, curve) AS finite,
        if(finite AND peak > 0, {levels:Float64} / peak, 0) AS factor,
        evidence,
        engagements,
        toString(fallback_level) AS fallback_level,
        cohort,
        best_hour
    FROM ${database}.timing_curves
    WHERE version > {since:UInt64} AND version <= {v:UInt64}
        AND version IN (SELECT version FROM ${database}.timing_runs)
    ORDER BY universal_id, version DESC
    LIMIT 1 BY universal_id
)
