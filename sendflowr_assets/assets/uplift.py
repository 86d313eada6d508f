"""The decision log and the uplift it measures: `decision_log` (the API's decisions from Kafka into ClickHouse,
exactly once, like `events`) and `timing_uplift` (treatment vs control engagement on the user's own list, with its
asset check). The logic lives in sendflowr.decisions.log_ingest and sendflowr.uplift."""

from datetime import UTC, datetime, timedelta

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    Config,
    MaterializeResult,
    MetadataValue,
    asset,
)
from pydantic import Field

from sendflowr.campaign.truth import truth_uplift
from sendflowr.decisions.log_ingest import DECISIONS
from sendflowr.kafka_io import ensure_topic
from sendflowr.settings import get_settings
from sendflowr.timing.signals import SignalRules
from sendflowr.uplift import present
from sendflowr.uplift.measure import UpliftConfig, UpliftReport, measure_uplift
from sendflowr.uplift.stats import RESAMPLES
from sendflowr_assets.assets.ingestion import REJECTED_SHARE_CHECK, IngestConfig, ingest_topic
from sendflowr_assets.resources import SendflowrResource

UPLIFT_CHECK = "treatment_not_worse_than_control"


@asset(
    group_name="ingestion",
    kinds={"kafka", "clickhouse"},
    pool="sendflowr_ingest",
    description="Every decision the API served (`decision_log`), from its Kafka topic, one row per decision, by the "
                "same exactly-once run as events; malformed messages go to `rejected_events`.",
    check_specs=[AssetCheckSpec(REJECTED_SHARE_CHECK, asset="decision_log",
                                description="Share of rejected messages in this run stays under the threshold")],
)
def decision_log(context: AssetExecutionContext, config: IngestConfig, sendflowr: SendflowrResource
                 ) -> MaterializeResult:
    settings = sendflowr.settings()
    if not settings.decision_log_topic:
        return MaterializeResult(
            metadata={"skipped": MetadataValue.text("SENDFLOWR_DECISION_LOG_TOPIC is empty: the log is off")},
            check_results=[AssetCheckResult(check_name=REJECTED_SHARE_CHECK, passed=True)])
    ensure_topic(settings, settings.decision_log_topic)  # an API that never ran has not created it yet
    return ingest_topic(context, config, sendflowr, DECISIONS)


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
    return MaterializeResult(metadata=uplift_metadata(report, truth), check_results=[uplift_check(report)])


def uplift_check(report: UpliftReport) -> AssetCheckResult:
    verdict = report.verdict
    group = report.overall
    metadata = {"verdict": MetadataValue.text(verdict)}
    if group is not None:
        c = group.comparison
        metadata.update(uplift=MetadataValue.json(c.uplift.to_dict()),
                        treatment_decisions=MetadataValue.int(c.treatment_decisions),
                        control_decisions=MetadataValue.int(c.control_decisions))
    descriptions = {
        "too_little_data": f"too little data to tell: each arm needs {report.config.min_decisions} matured "
                           f"decisions and {report.config.min_engaged} engaged ones (is SENDFLOWR_API_CONTROL_SHARE "
                           "above 0, and are decisions logged with their deliveries?)",
        "significantly_worse": "treatment is significantly worse than the random moments of the control arm",
        "significantly_better": "treatment is significantly better than control",
        "not_significant": "no significant difference between treatment and control yet",
    }
    return AssetCheckResult(check_name=UPLIFT_CHECK, passed=verdict in ("significantly_better", "not_significant"),
                            severity=AssetCheckSeverity.WARN, description=descriptions[verdict], metadata=metadata)


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
