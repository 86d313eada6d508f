"""The uplift report as people read it: a markdown table and two plots (base64 PNG), for the Dagster UI and the
`sendflowr campaign` summary. `truth` (synthetic worlds only): what the ground truth predicts for the same
decisions, {"treatment_rate", "control_rate", "uplift", "relative_uplift"}."""

from __future__ import annotations

import base64
import io
import math

from sendflowr.uplift.measure import UpliftReport
from sendflowr.uplift.stats import Interval


def _pct(value: float) -> str:
    return "-" if not math.isfinite(value) else f"{value:.1%}"


def _ci(interval: Interval, signed: bool = True) -> str:
    if not math.isfinite(interval.point):
        return "-"
    fmt = "{:+.1%}" if signed else "{:.1%}"
    if not math.isfinite(interval.low):
        return fmt.format(interval.point)
    return f"{fmt.format(interval.point)} [{fmt.format(interval.low)}, {fmt.format(interval.high)}]"


def table_markdown(report: UpliftReport) -> str:
    lines = ["| group | treatment: decisions, engaged | control: decisions, engaged | treatment rate [95% CI] | "
             "control rate [95% CI] | uplift, points [95% CI] | relative uplift [95% CI] | model predicted | "
             "enough data |",
             "|---|---|---|---|---|---|---|---|---|"]
    for g in report.groups:
        c = g.comparison
        lines.append(f"| {g.label} | {c.treatment_decisions}, {c.treatment_engaged} | {c.control_decisions}, "
                     f"{c.control_engaged} | {_ci(c.treatment_rate, False)} | {_ci(c.control_rate, False)} | "
                     f"{_ci(c.uplift)} | {_ci(c.relative_uplift)} | "
                     f"{'-' if not math.isfinite(g.predicted_uplift) else f'{g.predicted_uplift:+.1%}'} | "
                     f"{'yes' if g.enough else 'no'} |")
    if len(lines) == 2:
        lines.append("| (no decision has matured yet) | | | | | | | | |")
    return "\n".join(lines)


def compliance_markdown(report: UpliftReport) -> str:
    lines = ["| arm | decisions | due | delivered | within tolerance of the chosen moment |", "|---|---|---|---|---|"]
    for arm in ("treatment", "control"):
        lines.append(f"| {arm} | {report.decisions.get(arm, 0)} | {report.due.get(arm, 0)} | "
                     f"{report.delivered.get(arm, 0)} | {_pct(report.compliance(arm))} |")
    return "\n".join(lines)


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def plots(report: UpliftReport, truth: dict | None = None) -> dict[str, str]:
    """'rates': engagement rate per arm and group with 95% intervals; 'uplift': relative uplift per group with its
    interval (and the ground truth's, when given)."""
    groups = [g for g in report.groups if g.comparison.treatment_decisions or g.comparison.control_decisions]
    if not groups:
        return {}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    labels = [g.label for g in groups]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(groups) + 1.2))
    for offset, arm, color in ((-0.18, "treatment", "tab:blue"), (0.18, "control", "tab:gray")):
        for i, g in enumerate(groups):
            rate = g.comparison.treatment_rate if arm == "treatment" else g.comparison.control_rate
            if math.isfinite(rate.point):
                err = [[rate.point - rate.low], [rate.high - rate.point]] if math.isfinite(rate.low) else None
                ax.errorbar(rate.point, i + offset, xerr=err, fmt="o", color=color, capsize=3,
                            label=arm if i == 0 else None)
    ax.set_yticks(range(len(groups)), labels)
    ax.invert_yaxis()
    ax.set_xlabel(f"genuine engagement within {report.config.horizon_hours} h of delivery (95% CI)")
    ax.legend(loc="lower right")
    ax.set_title("Engagement rate per arm")
    out["rates"] = _png(fig)

    fig, ax = plt.subplots(figsize=(9, 0.45 * len(groups) + 1.2))
    for i, g in enumerate(groups):
        rel = g.comparison.relative_uplift
        if math.isfinite(rel.point):
            err = [[rel.point - rel.low], [rel.high - rel.point]] if math.isfinite(rel.low) else None
            ax.errorbar(rel.point, i, xerr=err, fmt="o", color="tab:blue" if g.enough else "tab:orange", capsize=3)
    if truth is not None and math.isfinite(truth.get("relative_uplift", math.nan)):
        ax.axvline(truth["relative_uplift"], color="tab:green", linestyle="--", label="ground truth (all decisions)")
        ax.legend(loc="lower right")
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(groups)), labels)
    ax.invert_yaxis()
    ax.set_xlabel("treatment rate / control rate - 1 (95% CI; orange: too little data)")
    ax.set_title("Uplift of SendFlowr's timing over a random moment")
    out["uplift"] = _png(fig)
    return out
