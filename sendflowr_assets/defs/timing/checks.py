"""Checks beside the timing assets; each is one function of sendflowr.timing.checks. Nothing to check (no
evaluation yet, no ground truth) is a warning that says why, never a pass. The evaluation's checks warn: they judge
the model on the data at hand, not the data's integrity."""

from dagster import AssetCheckSeverity

from sendflowr.timing import checks
from sendflowr_assets.findings import core_check

WARN = AssetCheckSeverity.WARN

curves_well_formed = core_check("timing_curves", checks.curves_well_formed)
every_person_has_a_curve = core_check("timing_curves", checks.every_person_has_a_curve)
heldout_beats_cohort_curves = core_check("timing_evaluation", checks.heldout_beats_cohort_curves, severity=WARN)
no_data_beats_best_single_hour = core_check("timing_evaluation", checks.no_data_beats_best_single_hour, severity=WARN)
confidence_calibrated = core_check("timing_evaluation", checks.confidence_calibrated, severity=WARN)

TIMING_CHECKS = [curves_well_formed, every_person_has_a_curve, heldout_beats_cohort_curves,
                 no_data_beats_best_single_hour, confidence_calibrated]
