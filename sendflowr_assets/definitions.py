"""The one Definitions object of the SendFlowr code location."""

from __future__ import annotations

from dagster import Definitions

from sendflowr_assets.assets.ingestion import events
from sendflowr_assets.checks.ingestion_checks import INGESTION_CHECKS
from sendflowr_assets.resources import default_resource
from sendflowr_assets.schedules import all_assets_job, ingest_job, ingest_schedule

defs = Definitions(
    assets=[events],
    asset_checks=INGESTION_CHECKS,
    jobs=[ingest_job, all_assets_job],
    schedules=[ingest_schedule],
    resources={"sendflowr": default_resource()},
)
