"""Checks beside the `events` asset; each is one function of sendflowr.ingest.checks. Nothing to check (no event,
no committed range yet) is a warning that says why, never a pass."""

from dagster import AssetCheckResult, asset_check

from sendflowr.ingest import checks
from sendflowr_assets.findings import check_result
from sendflowr_assets.resources import SendflowrResource


@asset_check(asset="events", description=checks.duplicate_event_ids.__doc__)
def no_duplicate_event_ids(sendflowr: SendflowrResource) -> AssetCheckResult:
    return check_result(checks.duplicate_event_ids(sendflowr.client(), sendflowr.clickhouse_database))


@asset_check(asset="events", description=checks.future_events.__doc__)
def no_events_from_the_future(sendflowr: SendflowrResource) -> AssetCheckResult:
    return check_result(checks.future_events(sendflowr.client(), sendflowr.clickhouse_database))


@asset_check(asset="events", description=checks.offset_gaps.__doc__)
def offsets_contiguous(sendflowr: SendflowrResource) -> AssetCheckResult:
    return check_result(checks.offset_gaps(sendflowr.client(), sendflowr.clickhouse_database, sendflowr.kafka_topic))


INGESTION_CHECKS = [no_duplicate_event_ids, no_events_from_the_future, offsets_contiguous]
