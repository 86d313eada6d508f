"""Decisions and their uplift: `decision_log` (the API's decisions from Kafka, ingested with events), `timing_uplift`
(hourly, after new decisions or engagement) and the `uplift` job (ingest, then measure: `sendflowr campaign`)."""

from dagster import AssetSelection, Definitions, define_asset_job

from sendflowr_assets.defs.decisions.assets import decision_log, timing_uplift
from sendflowr_assets.jobs import max_runtime

uplift_job = define_asset_job("uplift", selection=AssetSelection.assets("events", "decision_log", "timing_uplift"),
                              tags=max_runtime(2),
                              description="Ingest new events and decisions, then measure the uplift against control.")

defs = Definitions(assets=[decision_log, timing_uplift], jobs=[uplift_job])
