"""Timing: `timing_curves` (daily, after identity changed) and `timing_evaluation` (after each curves run), their
checks and the `timing` job."""

from dagster import AssetSelection, Definitions, define_asset_job

from sendflowr_assets.defs.timing.assets import timing_curves, timing_evaluation
from sendflowr_assets.defs.timing.checks import TIMING_CHECKS
from sendflowr_assets.jobs import max_runtime

timing_job = define_asset_job("timing", selection=AssetSelection.assets("timing_curves", "timing_evaluation"),
                              tags=max_runtime(6), description="Rebuild changed timing curves, then evaluate and "
                              "recalibrate.")

defs = Definitions(assets=[timing_curves, timing_evaluation], asset_checks=TIMING_CHECKS, jobs=[timing_job])
