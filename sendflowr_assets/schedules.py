"""Schedules: ingestion every minute by default (SENDFLOWR_INGEST_CRON), skipped while one still runs."""


from dagster import (
    AssetSelection,
    DagsterRunStatus,
    DefaultScheduleStatus,
    RunRequest,
    RunsFilter,
    ScheduleEvaluationContext,
    SkipReason,
    define_asset_job,
    schedule,
)

from sendflowr.settings import get_settings

ingest_job = define_asset_job("ingest_events", selection=AssetSelection.assets("events"),
                              description="Pull new Kafka offsets into ClickHouse.")
all_assets_job = define_asset_job("sendflowr_all", selection=AssetSelection.all(),
                                  description="Materialize every SendFlowr asset (the demo's main job).")

_ACTIVE = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING,
           DagsterRunStatus.STARTED]


@schedule(job=ingest_job, cron_schedule=get_settings().ingest_cron, execution_timezone="UTC",
          default_status=DefaultScheduleStatus.RUNNING,
          description="Ingest new events; skips a tick while the previous ingestion is still running.")
def ingest_schedule(context: ScheduleEvaluationContext):
    active = context.instance.get_run_records(RunsFilter(job_name=ingest_job.name, statuses=_ACTIVE), limit=1)
    if active:
        return SkipReason(f"ingestion run {active[0].dagster_run.run_id} is still in progress")
    return RunRequest()
