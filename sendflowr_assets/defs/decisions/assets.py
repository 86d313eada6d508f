"""The decision log and the uplift it measures: `decision_log` (the API's decisions from Kafka into ClickHouse,
exactly once, like `events`) and `timing_uplift` (treatment vs control engagement on the user's own list, with its
asset check). The logic lives in sendflowr.decisions.log_ingest and sendflowr.uplift. The decision log is ingested
with events (the ingestion sensor, defs/ingest/sensors.py); the uplift runs hourly (SENDFLOWR_UPLIFT_CRON) when
decisions or identity (after new events) changed since the tick."""

from datetime import UTC, datetime, timedelta

from dagster import (
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AutomationCondition,
    Config,
    MaterializeResult,
    MetadataValue,
    asset,
)
from pydantic import Field

from sendflowr.campaign.truth import truth_uplift
from sendflowr.decisions.log_ingest import DECISIONS
from sendflowr.findings import skip
from sendflowr.kafka_io import ensure_topic
from sendflowr.settings import get_settings
from sendflowr.timing.signals import SignalRules
from sendflowr.uplift import present
from sendflowr.uplift.checks import treatment_not_worse_than_control
from sendflowr.uplift.measure import UpliftConfig, UpliftReport, measure_uplift
from sendflowr.uplift.stats import RESAMPLES
from sendflowr_assets.defs.ingest.assets import REJECTED_SHARE_CHECK, IngestConfig, ingest_topic, rejected_share_spec
from sendflowr_assets.findings import check_result
from sendflowr_assets.resources import SendflowrResource

UPLIFT_CHECK = "treatment_not_worse_than_control"
LOG_OFF = "SENDFLOWR_DECISION_LOG_TOPIC is empty: the log is off, nothing to ingest or check"


def hourly_when_changed(cron: str) -> AutomationCondition:
    """Once per tick of `cron`, as soon as any dependency has updated since the tick (on_cron waits for all of them:
    the uplift changes with new decisions or with new engagement alone)."""
    tick = AutomationCondition.cron_tick_passed(cron, "UTC")
    return (AutomationCondition.in_latest_time_window() & tick.since_last_handled()
            & AutomationCondition.any_deps_match(AutomationCondition.newly_updated().since(tick)
                                                 | AutomationCondition.will_be_requested())
            ).with_label(f"on_cron_after_any_update({cron}, UTC)")


@asset(
    group_name="ingestion",
    kinds={"kafka", "clickhouse"},
    pool="sendflowr_ingest",
    description="Every decision the API served (`decision_log`), from its Kafka topic, one row per decision, by the "
                "same exactly-once run as events; malformed messages go to `rejected_events`.",
    check_specs=[rejected_share_spec("decision_log")],
)
def decision_log(context: AssetExecutionContext, config: IngestConfig, sendflowr: SendflowrResource
                 ) -> MaterializeResult:
    settings = sendflowr.settings()
    if not settings.decision_log_topic:
        return MaterializeResult(metadata={"skipped": MetadataValue.text(LOG_OFF)},
                                 check_results=[check_result(skip(LOG_OFF), check_name=REJECTED_SHARE_CHECK)])
    ensure_topic(settings, settings.decision_log_topic)  # an API that never ran has not created it yet
    return ingest_topic(context, config, sendflowr, DECISIONS, "decision_log")


class UpliftAssetConfig(Config):
    horizon_hours: int = Field(default=get_settings().uplift_horizon_hours,
                               description="Genuine engagement within this many hours of delivery counts.")
    since_days: int = Field(default=0, description="Only decisions of the last this many days (0: all).")
    min_decisions: int = Field(default=UpliftConfig.min_decisions,
                               description="Matured decisions per arm below which nothing is concluded.")
    ground_truth: str = Field(
        default="", description="A synthetic world's folder (default <SENDFLOWR_HOME>/world): when `sendflowr "
                                "campaign` rounds are there, their truth-based uplift is shown beside the measured.")


@asset(
    deps=["decision_log", "identity_graph"],
    group_name="timing",
    kinds={"clickhouse", "python"},
    pool="sendflowr_timing",
    automation_condition=hourly_when_changed(get_settings().uplift_cron),
    description="The uplift of SendFlowr's timing on your own list: logged decisions joined to their deliveries and "
                "genuine engagement, treatment vs the randomized control arm, overall, by fallback level and by "
                "evidence, with 95% bootstrap intervals over people; compliance (docs/EVALUATION.md).",
    check_specs=[AssetCheckSpec(UPLIFT_CHECK, asset="timing_uplift",
                                description="Warns when treatment is significantly worse than control, and when "
                                            "there is too little data to tell (never passes then).")],
)
def timing_uplift(context: AssetExecutionContext, config: UpliftAssetConfig,
                  sendflowr: SendflowrResource) -> MaterializeResult:
    settings = sendflowr.settings()
    since = datetime.now(UTC) - timedelta(days=config.since_days) if config.since_days else None
    report = measure_uplift(sendflowr.client(), sendflowr.clickhouse_database, SignalRules(),
                            UpliftConfig(horizon_hours=config.horizon_hours, since=since,
                                         min_decisions=config.min_decisions))
    world = config.ground_truth or str(settings.home / "world")
    truth = truth_uplift(world)
    report.plots = present.plots(report, truth)
    context.log.info(f"uplift verdict: {report.verdict}")
    return MaterializeResult(metadata=uplift_metadata(report, truth),
                             check_results=[check_result(treatment_not_worse_than_control(report),
                                                         AssetCheckSeverity.WARN, UPLIFT_CHECK)])


def uplift_metadata(report: UpliftReport, truth: dict | None) -> dict[str, MetadataValue]:
    group = report.overall
    metadata = {
        "verdict": MetadataValue.text(report.verdict),
        "observed_before": MetadataValue.text(report.observed_before.isoformat()),
        "horizon_hours": MetadataValue.int(report.config.horizon_hours),
        "decisions": MetadataValue.json(report.decisions),
        "compliance": MetadataValue.float(report.compliance()),
        "compliance_by_arm": MetadataValue.md(present.compliance_markdown(report)),
        "uplift_table": MetadataValue.md(present.table_markdown(report)),
        "interval_method": MetadataValue.text(f"Poisson bootstrap over people ({RESAMPLES:,} resamples), 95% "
                                              "percentile interval"),
        "report": MetadataValue.json(report.to_dict()),
    }
    if group is not None:
        metadata.update(uplift=MetadataValue.float(group.comparison.uplift.point),
                        uplift_ci95=MetadataValue.json([group.comparison.uplift.low, group.comparison.uplift.high]),
                        relative_uplift=MetadataValue.float(group.comparison.relative_uplift.point),
                        relative_uplift_ci95=MetadataValue.json([group.comparison.relative_uplift.low,
                                                                 group.comparison.relative_uplift.high]))
    needed = report.decisions_to_detect(0.1)
    if needed is not None:
        metadata["decisions_to_detect_10pct"] = MetadataValue.int(needed)
    if truth is not None:
        metadata["ground_truth"] = MetadataValue.json(truth)
    for name, png in report.plots.items():
        metadata[f"{name}_plot"] = MetadataValue.md(f"![{name}](data:image/png;base64,{png})")
    return metadata
