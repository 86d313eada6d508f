"""Checks beside the timing assets; each is one function of sendflowr.timing.checks. Nothing to check (no
evaluation yet, no ground truth) is a warning that says why, never a pass."""

from dagster import AssetCheckResult, AssetCheckSeverity, asset_check

from sendflowr.timing import checks
from sendflowr_assets.findings import check_result
from sendflowr_assets.resources import SendflowrResource


@asset_check(asset="timing_curves", description=checks.curves_well_formed.__doc__)
def curves_well_formed(sendflowr: SendflowrResource) -> AssetCheckResult:
    return check_result(checks.curves_well_formed(sendflowr.client(), sendflowr.clickhouse_database))


@asset_check(asset="timing_curves", description=checks.every_person_has_a_curve.__doc__)
def every_person_has_a_curve(sendflowr: SendflowrResource) -> AssetCheckResult:
    return check_result(checks.every_person_has_a_curve(sendflowr.client(), sendflowr.clickhouse_database))


@asset_check(asset="timing_evaluation", description=checks.heldout_beats_cohort_curves.__doc__)
def heldout_beats_cohort_curves(sendflowr: SendflowrResource) -> AssetCheckResult:
    return check_result(checks.heldout_beats_cohort_curves(sendflowr.client(), sendflowr.clickhouse_database),
                   AssetCheckSeverity.WARN)


@asset_check(asset="timing_evaluation", description=checks.no_data_beats_best_single_hour.__doc__)
def no_data_beats_best_single_hour(sendflowr: SendflowrResource) -> AssetCheckResult:
    return check_result(checks.no_data_beats_best_single_hour(sendflowr.client(), sendflowr.clickhouse_database),
                   AssetCheckSeverity.WARN)


@asset_check(asset="timing_evaluation", description=checks.confidence_calibrated.__doc__)
def confidence_calibrated(sendflowr: SendflowrResource) -> AssetCheckResult:
    return check_result(checks.confidence_calibrated(sendflowr.client(), sendflowr.clickhouse_database),
                   AssetCheckSeverity.WARN)


TIMING_CHECKS = [curves_well_formed, every_person_has_a_curve, heldout_beats_cohort_curves,
                 no_data_beats_best_single_hour, confidence_calibrated]
