"""The `identity_graph` asset: events -> people with stable universal ids (the logic lives in
sendflowr.identity.run). Eager: it runs once new events are ingested."""

from pathlib import Path

from dagster import AssetExecutionContext, AutomationCondition, Config, MaterializeResult, MetadataValue, asset
from pydantic import Field

from sendflowr.identity.evaluate import IdentityScore, score_identity
from sendflowr.identity.graph import Guards
from sendflowr.identity.normalize import DEFAULT_RULES, describe_rules
from sendflowr.identity.run import IdentityReport, stitch_once
from sendflowr_assets.resources import SendflowrResource


class IdentityConfig(Config):
    full_rebuild: bool = Field(
        default=False,
        description="Recompute everything from all events (rules or guards changed, or to start clean). "
                    "Universal ids of the previous graph are kept where their identifiers still exist. Otherwise "
                    "a run recomputes only the people its new events touch.")
    ground_truth: str = Field(
        default="",
        description="identifiers.parquet of a synthetic world, for precision/recall metadata "
                    "(default: <SENDFLOWR_HOME>/world/identifiers.parquet; skipped when absent).")


@asset(
    deps=["events"],
    group_name="identity",
    kinds={"clickhouse", "python"},
    pool="sendflowr_identity",
    automation_condition=AutomationCondition.eager(),
    description="Identity graph: every identifier seen in `events` -> one universal_id (`identity_nodes`, "
                "`identity_people`). Incremental over newly committed offsets; over-merge guards and audit.",
)
def identity_graph(context: AssetExecutionContext, config: IdentityConfig,
                   sendflowr: SendflowrResource) -> MaterializeResult:
    settings = sendflowr.settings()
    client = sendflowr.client()
    report = stitch_once(settings, client, DEFAULT_RULES, Guards(), full_rebuild=config.full_rebuild,
                         run_id=context.run.run_id, log=context.log.info)
    truth = Path(config.ground_truth) if config.ground_truth else settings.home / "world" / "identifiers.parquet"
    score = score_identity(client, settings.clickhouse_database, truth)
    if score is None:
        context.log.info(f"no ground truth at {truth}: precision/recall skipped")
    return MaterializeResult(metadata=report_metadata(report, score))


def _table(counts: dict[str, int], what: str) -> MetadataValue:
    rows = "\n".join(f"| {reason} | {n} |" for reason, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    return MetadataValue.md(f"| {what} | count |\n|---|---|\n" + (rows or "| - | 0 |"))


def report_metadata(report: IdentityReport, score: IdentityScore | None = None) -> dict[str, MetadataValue]:
    metadata = {
        "full_rebuild": MetadataValue.bool(report.full_rebuild),
        "new_events_scanned": MetadataValue.int(report.new_events),
        "identifiers_new": MetadataValue.int(report.identifiers_new),
        "identifiers_rejected": MetadataValue.int(sum(report.identifiers_rejected.values())),
        "identifiers_rejected_by_reason": _table(report.identifiers_rejected, "reason"),
        "identifiers_total": MetadataValue.int(report.nodes_total),
        "edges_new": MetadataValue.int(report.edges_new),
        "edges_total": MetadataValue.int(report.edges_total),
        "edges_blocked": MetadataValue.int(sum(report.edges_blocked.values())),
        "edges_blocked_by_reason": _table(report.edges_blocked, "guard"),
        "people_total": MetadataValue.int(report.people_total),
        "merges_this_run": MetadataValue.int(report.merges),
        "ids_changed_this_run": MetadataValue.int(report.ids_changed),
        "largest_person": MetadataValue.int(report.largest_person),
        "node_rows_written": MetadataValue.int(report.nodes_written),
        "region_identifiers": MetadataValue.int(report.region_nodes),
        "region_edges": MetadataValue.int(report.region_edges),
        "seconds": MetadataValue.float(round(report.seconds, 3)),
        "dagster/row_count": MetadataValue.int(report.nodes_total),
        "rules": MetadataValue.md(describe_rules(DEFAULT_RULES)),
    }
    if score is not None:
        metadata |= {
            "pairwise_precision": MetadataValue.float(round(score.precision, 5)),
            "pairwise_recall": MetadataValue.float(round(score.recall, 5)),
            "pairwise_recall_achievable": MetadataValue.float(round(score.achievable_recall, 5)),
            "recall_of_achievable": MetadataValue.float(round(score.recall_of_achievable, 5)),
            "people_glued_share": MetadataValue.float(round(score.glued_share, 5)),
            "merged_profiles_split": MetadataValue.int(score.merged_profiles_split),
            "truth_identifiers_scored": MetadataValue.int(score.identifiers),
        }
    return metadata
