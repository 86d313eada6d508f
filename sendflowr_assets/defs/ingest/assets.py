"""The `events` asset: Kafka -> ClickHouse, exactly once (the logic lives in sendflowr.ingest). Launched by the
ingestion sensor (sensors.py) when Kafka holds messages not yet ingested."""

from dagster import (
    AssetCheckSpec,
    AssetExecutionContext,
    Config,
    MaterializeResult,
    MetadataValue,
    asset,
)
from pydantic import Field

from sendflowr.clickhouse import row_count
from sendflowr.ingest import IngestOptions, IngestReport, checks, ingest_once
from sendflowr.ingest.sink import EVENTS, Sink
from sendflowr.ingest.slots import Slot
from sendflowr.settings import get_settings
from sendflowr_assets.findings import check_result
from sendflowr_assets.resources import SendflowrResource

REJECTED_SHARE_CHECK = "rejected_share_below_threshold"


def rejected_share_spec(asset: str) -> AssetCheckSpec:
    """The check every ingested topic's asset carries (its result: ingest_topic)."""
    return AssetCheckSpec(REJECTED_SHARE_CHECK, asset=asset,
                          description="Share of rejected messages in this run stays under the threshold")


class IngestConfig(Config):
    max_messages_per_partition: int = Field(
        default=get_settings().ingest_max_messages_per_partition,
        description="Most offsets read per partition in one pass.")
    until_caught_up: bool = Field(default=False, description="Repeat passes until no lag is left (catch-up run).")
    max_rejected_share: float = Field(
        default=get_settings().ingest_max_rejected_share,
        description="The run's check fails above this share of rejected messages.")
    writers: int = Field(default=get_settings().ingest_writers,
                         description="Writers that share the topic; this run ingests partitions p % writers == slot.")
    slot: int = Field(default=0, description="This run's writer slot in [0, writers) (the sensor sets it).")


@asset(
    group_name="ingestion",
    kinds={"kafka", "clickhouse"},
    pool="sendflowr_ingest",
    description="Engagement events from Kafka in ClickHouse (`events`), one row per event_id; malformed "
                "messages go to `rejected_events`. Each run ingests fixed offset ranges exactly once.",
    check_specs=[rejected_share_spec("events")],
)
def events(context: AssetExecutionContext, config: IngestConfig, sendflowr: SendflowrResource) -> MaterializeResult:
    return ingest_topic(context, config, sendflowr, EVENTS, "events")


def ingest_topic(context: AssetExecutionContext, config: IngestConfig, sendflowr: SendflowrResource,
                 sink: Sink, table: str) -> MaterializeResult:
    """One ingestion run of the sink's topic into `table`, its metadata and the rejected-share check (events,
    decision_log)."""
    client = sendflowr.client()
    report = ingest_once(
        sendflowr.settings(), client,
        IngestOptions(max_messages_per_partition=config.max_messages_per_partition,
                      until_caught_up=config.until_caught_up, slot=Slot(config.slot, config.writers)),
        run_id=context.run.run_id, log=context.log.info, sink=sink)
    found = checks.rejected_share(report.messages, report.rejected, config.max_rejected_share)
    return MaterializeResult(
        metadata=report_metadata(report, row_count(client, sendflowr.clickhouse_database, table)),
        check_results=[check_result(found, check_name=REJECTED_SHARE_CHECK)])


def report_metadata(report: IngestReport, table_rows: int) -> dict[str, MetadataValue]:
    rows = "\n".join(
        f"| {p} | {s.start} | {s.end} | {s.messages} | {s.valid} | {s.rejected} | "
        f"{report.lag.get(p, 0)} |" for p, s in sorted(report.partitions.items()))
    lag_rows = "\n".join(f"| {p} | {lag} |" for p, lag in sorted(report.lag.items()))
    return {
        "messages_read": MetadataValue.int(report.messages),
        "rows_inserted": MetadataValue.int(report.inserted),
        "rows_rejected": MetadataValue.int(report.rejected),
        "duplicates_dropped": MetadataValue.int(report.duplicates),
        "lag_left": MetadataValue.int(sum(report.lag.values())),
        "events_per_second": MetadataValue.float(round(report.events_per_second, 1)),
        "seconds": MetadataValue.float(round(report.seconds, 3)),
        "replayed_crashed_ranges": MetadataValue.bool(report.replayed),
        "dagster/row_count": MetadataValue.int(table_rows),  # the table's rows; this run's are rows_inserted
        "ranges": MetadataValue.md(
            "| partition | start | end | read | valid | rejected | lag left |\n"
            "|---|---|---|---|---|---|---|\n" + (rows or "| - | | | 0 | 0 | 0 | |")),
        "lag_by_partition": MetadataValue.md("| partition | lag |\n|---|---|\n" + lag_rows),
        "offsets_lost_to_retention": MetadataValue.int(sum(report.skipped_by_retention.values())),
    }
