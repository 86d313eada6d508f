"""Timing assets: `timing_curves` (per-person curves, daily) and `timing_evaluation` (scored against a
synthetic world's ground truth; fits the calibration the API uses). The logic lives in sendflowr.timing."""

import json
from pathlib import Path

from dagster import AssetExecutionContext, Config, MaterializeResult, MetadataValue, asset
from pydantic import Field

from sendflowr.timing.estimate import EstimatorParams
from sendflowr.timing.evaluate import BUCKETS, EvalConfig, EvalReport, evaluate
from sendflowr.timing.run import TimingReport, materialize, next_version
from sendflowr.timing.signals import SignalRules
from sendflowr_assets.resources import SendflowrResource


class TimingConfig(Config):
    full: bool = Field(default=False, description="Rewrite every person's curve, changed or not.")


class EvaluationConfig(Config):
    ground_truth: str = Field(
        default="", description="Folder of a synthetic world's ground truth (default: <SENDFLOWR_HOME>/world); "
                                "the evaluation is skipped when it is absent.")
    holdout_share: float = Field(default=0.25, description="Share of the latest campaigns held out.")
    window_hours: int = Field(default=24, description="Length of each decision window.")
    max_decisions: int = Field(default=200_000, description="Decisions scored at most (a random subset).")


def _rules(resource: SendflowrResource) -> SignalRules:
    settings = resource.settings()
    return SignalRules(open_weight=settings.timing_open_weight, click_weight=settings.timing_click_weight)


def _params(resource: SendflowrResource) -> EstimatorParams:
    return EstimatorParams(prior_strength=resource.settings().timing_prior_strength)


@asset(
    deps=["identity_graph"],
    group_name="timing",
    kinds={"clickhouse", "python"},
    pool="sendflowr_timing",
    description="Per-person engagement curves over the 168 UTC hours of the week (`timing_curves`), cohort and "
                "global priors (`timing_priors`), committed by a `timing_runs` row. Machine opens and scanner "
                "clicks removed; exposure-corrected; smoothed; shrunk toward learned cohorts (docs/TIMING.md).",
)
def timing_curves(context: AssetExecutionContext, config: TimingConfig,
                  sendflowr: SendflowrResource) -> MaterializeResult:
    client = sendflowr.client()
    rules = _rules(sendflowr)
    report = materialize(client, sendflowr.clickhouse_database, rules, _params(sendflowr),
                         run_id=context.run.run_id, full=config.full, log=context.log.info)
    return MaterializeResult(metadata=curves_metadata(report, rules))


def curves_metadata(report: TimingReport, rules: SignalRules) -> dict[str, MetadataValue]:
    shares = report.shares()
    t = report.totals
    if report.skipped:
        return {"version": MetadataValue.int(report.version), "skipped": MetadataValue.bool(True),
                "new_events": MetadataValue.int(0)}
    return {
        "version": MetadataValue.int(report.version),
        "skipped": MetadataValue.bool(False),
        "people": MetadataValue.int(report.people),
        "people_written": MetadataValue.int(report.people_written),
        "full_rewrite": MetadataValue.bool(report.full_rewrite),
        "new_events": MetadataValue.int(report.new_events),
        "cohorts_learned": MetadataValue.int(report.cohorts),
        "fallback_levels": MetadataValue.json(report.by_level),
        "machine_open_share": MetadataValue.float(shares["machine_open_share"]),
        "scanner_click_share": MetadataValue.float(shares["scanner_click_share"]),
        "engaged_delivery_share": MetadataValue.float(shares["engaged_delivery_share"]),
        "signal": MetadataValue.md(
            "| | total | machine | genuine |\n|---|---|---|---|\n"
            f"| opens | {t.get('opens', 0)} | {t.get('machine_opens', 0)} | {t.get('genuine_opens', 0)} |\n"
            f"| clicks | {t.get('clicks', 0)} | {t.get('scanner_clicks', 0)} | {t.get('genuine_clicks', 0)} |\n"
            f"| deliveries | {t.get('deliveries', 0)} | | engaged {t.get('engaged', 0)} |\n\n"
            f"Rules: {rules.describe()}"),
        "seconds": MetadataValue.json({k: round(v, 3) for k, v in report.seconds.items()}),
    }


@asset(
    deps=["timing_curves"],
    group_name="timing",
    kinds={"clickhouse", "python"},
    pool="sendflowr_timing",
    description="Scores decisions on held-out campaigns of the synthetic world against random, window start, "
                "global best hour and most-frequent-open-hour baselines, per data-richness bucket, with "
                "bootstrap intervals; fits the confidence calibration and commits it for the API.",
)
def timing_evaluation(context: AssetExecutionContext, config: EvaluationConfig,
                      sendflowr: SendflowrResource) -> MaterializeResult:
    settings = sendflowr.settings()
    truth = Path(config.ground_truth) if config.ground_truth else settings.home / "world"
    if not (truth / "true_curves.parquet").exists():
        context.log.info(f"no ground truth at {truth}: evaluation skipped")
        return MaterializeResult(metadata={"skipped": MetadataValue.text(f"no ground truth at {truth}")})
    client = sendflowr.client()
    db = sendflowr.clickhouse_database
    report = evaluate(client, db, truth, _rules(sendflowr), _params(sendflowr),
                      EvalConfig(holdout_share=config.holdout_share, window_hours=config.window_hours,
                                 max_decisions=config.max_decisions))
    version = commit_calibration(client, db, report, context.run.run_id)
    return MaterializeResult(metadata=evaluation_metadata(report, version))


def commit_calibration(client, database: str, report: EvalReport, run_id: str) -> int:
    """A new committed version: same curves, the freshly fitted calibration (the API reloads it)."""
    head = client.query(f"SELECT people FROM {database}.timing_runs ORDER BY version DESC LIMIT 1").result_rows
    version = next_version(client, database)
    client.command(f"INSERT INTO {database}.timing_evaluations VALUES ({{r:String}}, {{v:UInt64}}, now64(3), "
                   "{j:String})", parameters={"r": run_id, "v": version, "j": json.dumps(report.to_dict())})
    client.command(
        f"INSERT INTO {database}.timing_runs (version, run_id, materialized_at, people, calibration, kind, "
        "people_written, metadata) VALUES ({v:UInt64}, {r:String}, now64(3), {p:UInt64}, {c:String}, "
        "'evaluation', 0, {m:String})",
        parameters={"v": version, "r": run_id, "p": int(head[0][0]) if head else 0,
                    "c": report.calibration.to_json(), "m": json.dumps({"ece": report.ece})})
    return version


def _ci(lift: dict, base: str) -> str:
    if base not in lift:
        return "-"
    v = lift[base]
    return f"{v['lift']:+.1%} [{v['ci95'][0]:+.1%}, {v['ci95'][1]:+.1%}]"


def _bucket_table(report: EvalReport) -> str:
    lines = ["| bucket | decisions | share of oracle: ours | random | start | global | recent open | "
             "top slot ±1h: ours | global | lift vs global [95% CI] | lift vs recent open [95% CI] |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for _, _, name in BUCKETS:
        b = report.buckets.get(name, {})
        if not b.get("decisions"):
            lines.append(f"| {name} | 0 | | | | | | | | | |")
            continue
        s, h, lift = b["share_of_oracle"], b["top_slot_within_1h"], b["lift"]

        lines.append(f"| {name} | {b['decisions']} | {s['ours']:.3f} | {s['random']:.3f} | {s['window_start']:.3f} "
                     f"| {s['global_best_hour']:.3f} | {s['recent_open_hour']:.3f} | {h['ours']:.2f} | "
                     f"{h['global_best_hour']:.2f} | {_ci(lift, 'global_best_hour')} | "
                     f"{_ci(lift, 'recent_open_hour')} |")
    return "\n".join(lines)


def evaluation_metadata(report: EvalReport, version: int) -> dict[str, MetadataValue]:
    return {
        "calibration_version": MetadataValue.int(version),
        "cutoff": MetadataValue.text(report.cutoff.isoformat()),
        "decisions": MetadataValue.int(report.decisions),
        "people": MetadataValue.int(report.people),
        "ece": MetadataValue.float(report.ece),
        "ece_uncalibrated": MetadataValue.float(report.ece_uncalibrated),
        "share_of_oracle": MetadataValue.float(report.overall["share_of_oracle"]["ours"]),
        "by_bucket": MetadataValue.md(_bucket_table(report)),
        "buckets": MetadataValue.json(report.buckets),
        "ml_prior": MetadataValue.json(report.ml or {"status": "not evaluated"}),
        "curves_plot": MetadataValue.md(f"![curves](data:image/png;base64,{report.plots['curves']})"),
        "calibration_plot": MetadataValue.md(f"![calibration](data:image/png;base64,{report.plots['calibration']})"),
    }
