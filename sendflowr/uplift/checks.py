"""The uplift's check: treatment is not significantly worse than the randomized control. Too little data to tell is
a skip (a warning in Dagster), never a pass."""

from __future__ import annotations

from sendflowr.findings import Finding, skip
from sendflowr.uplift.measure import UpliftReport

SUMMARIES = {
    "significantly_worse": "treatment is significantly worse than the random moments of the control arm",
    "significantly_better": "treatment is significantly better than control",
    "not_significant": "no significant difference between treatment and control yet",
}


def treatment_not_worse_than_control(report: UpliftReport) -> Finding:
    """Passes unless the overall uplift's 95% interval lies below zero; skipped while an arm has too little data."""
    verdict = report.verdict
    facts: dict = {"verdict": verdict}
    group = report.overall
    if group is not None:
        c = group.comparison
        facts.update(uplift=c.uplift.to_dict(), treatment_decisions=c.treatment_decisions,
                     control_decisions=c.control_decisions)
    if verdict == "too_little_data":
        return skip(f"too little data to tell: each arm needs {report.config.min_decisions} matured decisions and "
                    f"{report.config.min_engaged} engaged ones (is SENDFLOWR_API_CONTROL_SHARE above 0, and are "
                    "decisions logged with their deliveries?)", **facts)
    return Finding(passed=verdict != "significantly_worse", facts=facts, summary=SUMMARIES[verdict])
