"""Checks beside the `events` asset; each is one ClickHouse query from sendflowr.ingest.checks."""


from dagster import AssetCheckResult, MetadataValue, asset_check

from sendflowr.ingest import checks
from sendflowr_assets.resources import SendflowrResource


def _result(found: checks.CheckFinding) -> AssetCheckResult:
    return AssetCheckResult(
        passed=found.passed,
        metadata={"violations": MetadataValue.int(found.violations),
                  "examples": MetadataValue.json(found.examples)},
    )


@asset_check(asset="events", description="Every event_id appears once in events.")
def no_duplicate_event_ids(sendflowr: SendflowrResource) -> AssetCheckResult:
    return _result(checks.duplicate_event_ids(sendflowr.client(), sendflowr.clickhouse_database))


@asset_check(asset="events", description="No event occurred after it was ingested (beyond the clock-skew "
                                         "tolerance the contract allows).")
def no_events_from_the_future(sendflowr: SendflowrResource) -> AssetCheckResult:
    return _result(checks.future_events(sendflowr.client(), sendflowr.clickhouse_database))


@asset_check(asset="events", description="Committed offset ranges of each partition are contiguous: no gaps, "
                                         "no overlaps.")
def offsets_contiguous(sendflowr: SendflowrResource) -> AssetCheckResult:
    return _result(checks.offset_gaps(sendflowr.client(), sendflowr.clickhouse_database, sendflowr.kafka_topic))


INGESTION_CHECKS = [no_duplicate_event_ids, no_events_from_the_future, offsets_contiguous]
