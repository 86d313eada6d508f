"""Checks beside the `events` asset; each is one function of sendflowr.ingest.checks. Nothing to check (no event,
no committed range yet) is a warning that says why, never a pass."""

from dagster import AssetCheckSeverity

from sendflowr.ingest import checks
from sendflowr_assets.findings import core_check

no_duplicate_event_ids = core_check("events", checks.duplicate_event_ids, name="no_duplicate_event_ids")
no_reused_event_ids = core_check("events", checks.reused_event_ids, name="no_reused_event_ids",
                                 severity=AssetCheckSeverity.WARN)  # the producer's data, kept as sent
no_events_from_the_future = core_check("events", checks.future_events, name="no_events_from_the_future")
offsets_contiguous = core_check("events", checks.offset_gaps, name="offsets_contiguous",
                                args=lambda r: (r.client(), r.clickhouse_database, r.kafka_topic))

INGESTION_CHECKS = [no_duplicate_event_ids, no_reused_event_ids, no_events_from_the_future, offsets_contiguous]
