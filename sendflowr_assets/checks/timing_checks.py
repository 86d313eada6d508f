"""Checks beside the timing assets: each reads what ClickHouse holds for the latest committed version."""

import json

from dagster import AssetCheckResult, AssetCheckSeverity, MetadataValue, asset_check

from sendflowr_assets.resources import SendflowrResource

_COMMITTED = "(SELECT max(version) FROM {db}.timing_runs)"


@asset_check(asset="timing_curves", description="Every committed curve has 168 finite, non-negative values, its "
                                                "best_hour is its argmax and its fallback level is known.")
def curves_well_formed(sendflowr: SendflowrResource) -> AssetCheckResult:
    db = sendflowr.clickhouse_database
    rows = sendflowr.client().query(
        "SELECT universal_id, length(c) AS n, b, lvl FROM (SELECT universal_id, argMax(curve, version) AS c, "
        "argMax(best_hour, version) AS b, toString(argMax(fallback_level, version)) AS lvl "
        f"FROM {db}.timing_curves WHERE version <= {_COMMITTED.format(db=db)} GROUP BY universal_id) "
        "WHERE n != 168 OR arrayExists(x -> NOT isFinite(x) OR x < 0, c) OR b + 1 != indexOf(c, arrayMax(c)) "
        "OR lvl NOT IN ('person', 'cohort', 'global') LIMIT 10").result_rows
    return AssetCheckResult(passed=not rows,
                            metadata={"examples": MetadataValue.json([list(map(str, r)) for r in rows])})


@asset_check(asset="timing_curves", description="The committed run's people count equals the distinct people with "
                                                "a committed curve, and a global prior is committed.")
def every_person_has_a_curve(sendflowr: SendflowrResource) -> AssetCheckResult:
    db = sendflowr.clickhouse_database
    client = sendflowr.client()
    head = client.query(f"SELECT version, people FROM {db}.timing_runs WHERE kind = 'curves' "
                        "ORDER BY version DESC LIMIT 1").result_rows
    if not head:
        return AssetCheckResult(passed=False, metadata={"reason": MetadataValue.text("no committed run")})
    version, people = head[0]
    curves = int(client.command(f"SELECT uniqExact(universal_id) FROM {db}.timing_curves "
                                "WHERE version <= {v:UInt64}", parameters={"v": version}))
    priors = int(client.command(f"SELECT count() FROM {db}.timing_priors WHERE level = 'global' "
                                "AND version <= {v:UInt64}", parameters={"v": version}))
    return AssetCheckResult(passed=curves == people and priors > 0,
                            metadata={"people": MetadataValue.int(int(people)), "curves": MetadataValue.int(curves),
                                      "global_priors": MetadataValue.int(priors)})


def _latest_report(sendflowr: SendflowrResource) -> dict | None:
    db = sendflowr.clickhouse_database
    rows = sendflowr.client().query(
        f"SELECT report FROM {db}.timing_evaluations ORDER BY evaluated_at DESC LIMIT 1").result_rows
    return json.loads(rows[0][0]) if rows else None


@asset_check(asset="timing_evaluation", description="For people with no data, our choice is never worse than the "
                                                    "global fallback's: the 95% interval of the lift vs the global "
                                                    "best hour in bucket 0 does not lie below zero.")
def no_data_not_worse_than_global(sendflowr: SendflowrResource) -> AssetCheckResult:
    report = _latest_report(sendflowr)
    lift = (((report or {}).get("buckets", {}).get("0") or {}).get("lift") or {}).get("global_best_hour")
    if lift is None:
        return AssetCheckResult(passed=True, metadata={"skipped": MetadataValue.text("no evaluation with bucket 0")})
    return AssetCheckResult(passed=lift["ci95"][1] >= 0, metadata={"lift": MetadataValue.float(lift["lift"]),
                                                                "ci95": MetadataValue.json(lift["ci95"])})


@asset_check(asset="timing_evaluation",
             description="Confidence is calibrated: held-out expected calibration error (10 bins) at most 0.05.")
def confidence_calibrated(sendflowr: SendflowrResource) -> AssetCheckResult:
    report = _latest_report(sendflowr)
    if report is None:
        return AssetCheckResult(passed=True, metadata={"skipped": MetadataValue.text("no evaluation yet")})
    return AssetCheckResult(passed=report["ece"] <= 0.05, severity=AssetCheckSeverity.WARN,
                            metadata={"ece": MetadataValue.float(report["ece"])})


TIMING_CHECKS = [curves_well_formed, every_person_has_a_curve, no_data_not_worse_than_global, confidence_calibrated]
