"""The one Definitions object of the SendFlowr code location."""

from __future__ import annotations

from dagster import Definitions

from sendflowr_assets.assets.identity import identity_graph
from sendflowr_assets.assets.ingestion import events
from sendflowr_assets.assets.timing import timing_curves, timing_evaluation
from sendflowr_assets.assets.uplift import decision_log, timing_uplift
from sendflowr_assets.checks.identity_checks import IDENTITY_CHECKS
from sendflowr_assets.checks.ingestion_checks import INGESTION_CHECKS
from sendflowr_assets.checks.timing_checks import TIMING_CHECKS
from sendflowr_assets.resources import default_resource
from sendflowr_assets.schedules import (
    all_assets_job,
    identity_job,
    identity_schedule,
    ingest_job,
    ingest_schedule,
    timing_job,
    timing_schedule,
    uplift_job,
    uplift_schedule,
)

defs = Definitions(
    assets=[events, decision_log, identity_graph, timing_curves, timing_evaluation, timing_uplift],
    asset_checks=[*INGESTION_CHECKS, *IDENTITY_CHECKS, *TIMING_CHECKS],
    jobs=[ingest_job, identity_job, timing_job, uplift_job, all_assets_job],
    schedules=[ingest_schedule, identity_schedule, timing_schedule, uplift_schedule],
    resources={"sendflowr": default_resource()},
)
