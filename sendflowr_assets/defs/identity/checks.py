"""Checks beside the `identity_graph` asset; each is one function of sendflowr.identity.checks. Nothing to check
(no graph, no merge yet) is a warning that says why, never a pass."""

from dagster import AssetCheckResult, asset_check

from sendflowr.identity import checks
from sendflowr_assets.findings import check_result
from sendflowr_assets.resources import SendflowrResource


@asset_check(asset="identity_graph", description=checks.one_universal_id_per_identifier.__doc__)
def one_universal_id_per_identifier(sendflowr: SendflowrResource) -> AssetCheckResult:
    return check_result(checks.one_universal_id_per_identifier(sendflowr.client(), sendflowr.clickhouse_database))


@asset_check(asset="identity_graph", description=checks.no_person_over_size_cap.__doc__)
def no_person_over_size_cap(sendflowr: SendflowrResource) -> AssetCheckResult:
    return check_result(checks.no_person_over_size_cap(sendflowr.client(), sendflowr.clickhouse_database))


@asset_check(asset="identity_graph", description=checks.merge_log_acyclic.__doc__)
def merge_log_acyclic(sendflowr: SendflowrResource) -> AssetCheckResult:
    return check_result(checks.merge_log_acyclic(sendflowr.client(), sendflowr.clickhouse_database))


IDENTITY_CHECKS = [one_universal_id_per_identifier, no_person_over_size_cap, merge_log_acyclic]
