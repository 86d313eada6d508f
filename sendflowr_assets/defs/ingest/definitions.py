"""Ingestion: the `events` asset and its checks, the `ingest_events` job (events and the decision log) and the sensor
that launches it when Kafka holds something new."""

from dagster import AssetSelection, Definitions, define_asset_job

from sendflowr_assets.defs.ingest.assets import events
from sendflowr_assets.defs.ingest.checks import INGESTION_CHECKS
from sendflowr_assets.defs.ingest.sensors import INGEST_JOB, ingest_sensor
from sendflowr_assets.jobs import max_runtime

# Dagster retries a failed run (where the instance enables run retries): the sensor asks for the same ranges once.
ingest_job = define_asset_job(INGEST_JOB, selection=AssetSelection.assets("events", "decision_log"),
                              description="Pull new Kafka offsets (events, decision log) into ClickHouse.",
                              tags={**max_runtime(1), "dagster/max_retries": "2"})

defs = Definitions(assets=[events], asset_checks=INGESTION_CHECKS, jobs=[ingest_job], sensors=[ingest_sensor])
