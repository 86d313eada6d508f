"""The SendFlowr code location: the Definitions of each domain (defs/<domain>/definitions.py: its assets, checks,
jobs and sensors) merged, with what they share: the resource, the executor, the job of every asset and the sensor that
evaluates the assets' automation conditions."""

from __future__ import annotations

from dagster import (
    AssetSelection,
    AutomationConditionSensorDefinition,
    DefaultSensorStatus,
    Definitions,
    in_process_executor,
)

from sendflowr_assets.defs.decisions import definitions as decisions
from sendflowr_assets.defs.identity import definitions as identity
from sendflowr_assets.defs.ingest import definitions as ingest
from sendflowr_assets.defs.timing import definitions as timing
from sendflowr_assets.jobs import all_assets_job
from sendflowr_assets.resources import default_resource

# Identity after new events, timing daily, the evaluation after timing, the uplift hourly (each asset's condition).
automation_sensor = AutomationConditionSensorDefinition(
    "sendflowr_automation", target=AssetSelection.all(), default_status=DefaultSensorStatus.RUNNING,
    description="Evaluates the assets' automation conditions: identity after new events, timing daily, the "
                "evaluation after timing, the uplift hourly.")

defs = Definitions.merge(
    ingest.defs, identity.defs, timing.defs, decisions.defs,
    Definitions(jobs=[all_assets_job], sensors=[automation_sensor], resources={"sendflowr": default_resource()},
                # One process per run: a step process would start Python and import Dagster and SendFlowr again
                # (seconds) for runs whose steps take less (docs/ARCHITECTURE.md, Dagster).
                executor=in_process_executor),
)
