"""Timing assets: `timing_curves` (per-person curves, daily) and `timing_evaluation` (measures the model on the
user's own events, and against a synthetic world's ground truth when there is one; commits the calibration the
API uses). The logic lives in sendflowr.timing. Curves run daily (SENDFLOWR_TIMING_CRON) once identity has
changed since the tick; the evaluation follows each curves run."""

from pathlib import Path

from dagster import AssetExecutionContext, AutomationCondition, Config, MaterializeResult, MetadataValue, asset
from pydantic import Field

from sendflowr.settings import get_settings
from sendflowr.timing.estimate import EstimatorParams
from sendflowr.timing.evaluate import BUCKETS, EvalConfig, EvalReport
from sendflowr.timing.evaluation_run import EvaluationOutcome, run_evaluation
from sendflowr.timing.predictive import Predictive, reliability_png
from sendflowr.timing.run import TimingReport, materialize
from sendflowr.timing.signals import SignalRules
from sendflowr_assets.resources import SendflowrResource


class TimingConfig(Config):
    full: bool = Field(default=False, description="Rewrite every person's curve, changed or not.")


class EvaluationConfig(Config):
    ground_truth: str = Field(
        default="", description="Folder of a synthetic world's ground truth (default: <SENDFLOWR_HOME>/world); "
                                "the truth-based part runs only when it exists.")
    holdout_share: float = Field(default=0.25, description="Truth-based part: share of the latest campaigns held out.")
    window_hours: int = Field(default=24, description="Truth-based part: length of each decision window.")
    max_decisions: int = Field(default=200_000, description="Truth-based part: decisions scored at most.")


def _params(resource: SendflowrResource) -> EstimatorParams:
    return EstimatorParams(prior_strength=resource.settings().timing_prior_strength)


@asset(
    deps=["identity_graph"],
    group_name="timing",
    kinds={"clickhouse", "python"},
    pool="sendflowr_timing",
    automation_condition=AutomationCondition.on_cron(get_settings().timing_cron),
    description="Per-person curves over the 168 UTC hours of the week (`timing_curves`): the chance a message "
                "delivered in each hour is genuinely engaged, from a time-to-engagement model of when each person "
                "opens and clicks (machine opens and scanner clicks removed), shrunk toward learned cohorts and "
                "activity clusters; cohort and global priors (`timing_priors`); committed by a `timing_runs` row "
                "(docs/TIMING.md).",
)
def timing_curves(context: AssetExecutionContext, config: TimingConfig,
                  sendflowr: SendflowrResource) -> MaterializeResult:
    rules = SignalRules()
    report = materialize(sendflowr.client(), sendflowr.clickhouse_database, rules, _params(sendflowr),
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
        "dagster/row_count": MetadataValue.int(report.people),  # one committed curve per person
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
    automation_condition=AutomationCondition.eager(),
    description="Measures the model on the user's own events: held-out deliveries scored (log-loss, Brier, AUC) "
                "against the global and cohort curves and simpler rules, with a reliability diagram; commits the "
                "confidence and expected-engagement calibration the API uses. With a synthetic world's ground "
                "truth, also scores decisions against random, window start, best single hour and open-hour rules "
                "per data-richness bucket (docs/EVALUATION.md, docs/TIMING.md).",
)
def timing_evaluation(context: AssetExecutionContext, config: EvaluationConfig,
                      sendflowr: SendflowrResource) -> MaterializeResult:
    settings = sendflowr.settings()
    truth = Path(config.ground_truth) if config.ground_truth else settings.home / "world"
    outcome = run_evaluation(sendflowr.client(), sendflowr.clickhouse_database, SignalRules(), _params(sendflowr),
                             context.run.run_id, truth,
                             EvalConfig(holdout_share=config.holdout_share, window_hours=config.window_hours,
                                        max_decisions=config.max_decisions), log=context.log.info)
    return MaterializeResult(metadata=evaluation_metadata(outcome))


def _ci(lift: dict, base: str) -> str:
    if base not in lift:
        return "-"
    v = lift[base]
    return f"{v['lift']:+.1%} [{v['ci95'][0]:+.1%}, {v['ci95'][1]:+.1%}]"


def _predictive_table(p: Predictive) -> str:
    lines = ["| method | log-loss | Brier | AUC |", "|---|---|---|---|"]
    for name, m in p.metrics.items():
        lines.append(f"| {name} | {m.get('log_loss', float('nan')):.4f} | {m.get('brier', float('nan')):.4f} | "
                     f"{m.get('auc', float('nan')):.3f} |")
    return "\n".join(lines)


def _bucket_table(report: EvalReport) -> str:
    bases = ("random", "window_start", "best_single_hour", "genuine_open_hour")
    lines = ["| bucket | decisions | share of oracle | " + " | ".join(f"lift vs {b}" for b in bases) + " |",
             "|---|---|---|" + "---|" * len(bases)]
    for _, _, name in BUCKETS:
        b = report.buckets.get(name, {})
        if not b.get("decisions"):
            lines.append(f"| {name} | 0 |" + " |" * (1 + len(bases)))
            continue
        lines.append(f"| {name} | {b['decisions']} | {b['share_of_oracle']['ours']:.3f} | "
                     + " | ".join(_ci(b["lift"], base) for base in bases) + " |")
    return "\n".join(lines)


def evaluation_metadata(outcome: EvaluationOutcome) -> dict[str, MetadataValue]:
    if outcome.version is None:
        return {"skipped": MetadataValue.text(outcome.skipped)}
    p = outcome.predictive
    meta = {
        "calibration_version": MetadataValue.int(outcome.version),
        "heldout_deliveries": MetadataValue.int(p.deliveries),
        "heldout_people": MetadataValue.int(p.people),
        "predictive": MetadataValue.md(_predictive_table(p)),
        "sharpness": MetadataValue.float(p.sharpness),
        "reliability_plot": MetadataValue.md(f"![reliability](data:image/png;base64,{reliability_png(p)})"),
    }
    if outcome.truth is not None:
        t = outcome.truth
        meta.update({
            "truth_decisions": MetadataValue.int(t.decisions),
            "truth_ece": MetadataValue.float(t.ece),
            "truth_share_of_oracle": MetadataValue.float(t.overall["share_of_oracle"]["ours"]),
            "truth_by_bucket": MetadataValue.md(_bucket_table(t)),
            "truth_buckets": MetadataValue.json(t.buckets),
            "truth_curves_plot": MetadataValue.md(f"![curves](data:image/png;base64,{t.plots['curves']})"),
            "truth_calibration_plot": MetadataValue.md(
                f"![calibration](data:image/png;base64,{t.plots['calibration']})"),
        })
    return meta
