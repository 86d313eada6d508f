"""Schedules: ingestion of events and the decision log every minute (SENDFLOWR_INGEST_CRON), identity hourly
(SENDFLOWR_IDENTITY_CRON), timing daily (SENDFLOWR_TIMING_CRON), the uplift hourly (SENDFLOWR_UPLIFT_CRON); each
skips a tick while its previous run still runs. With SENDFLOWR_INGEST_WRITERS = N > 1 an ingestion tick launches one
run per writer slot whose previous run has ended (docs/INGESTION.md, "Several writers")."""


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


def _max_runtime(hours: float) -> dict[str, str]:
    # Where run monitoring is on (docker-compose's instance), a run still going after this is terminated: a hung
    # or orphaned run would otherwise keep its schedule skipping every tick. Progress is committed per range, so
    # the next run carries on.
    return {"dagster/max_runtime": str(int(hours * 3600))}


ingest_job = define_asset_job("ingest_events", selection=AssetSelection.assets("events", "decision_log"),
                              description="Pull new Kafka offsets (events, decision log) into ClickHouse.",
                              tags=_max_runtime(1))
all_assets_job = define_asset_job("sendflowr_all", selection=AssetSelection.all(), tags=_max_runtime(12),
                                  description="Materialize every SendFlowr asset (the demo's main job).")

_ACTIVE = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING,
           DagsterRunStatus.STARTED]


def _skipping_while_active(name: str, job, cron: str, what: str):
    """A schedule for `job` that skips a tick while an earlier run of it is still queued or running."""

    @schedule(name=name, job=job, cron_schedule=cron, execution_timezone="UTC",
              default_status=DefaultScheduleStatus.RUNNING,
              description=f"{what}; skips a tick while the previous run is still in progress.")
    def _schedule(context: ScheduleEvaluationContext):
        active = context.instance.get_run_records(RunsFilter(job_name=job.name, statuses=_ACTIVE), limit=1)
        if active:
            return SkipReason(f"run {active[0].dagster_run.run_id} of {job.name} is still in progress")
        return RunRequest()

    return _schedule


INGEST_SLOT_TAG = "sendflowr/ingest_slot"


def _ingest_schedule(writers: int):
    if writers == 1:
        return _skipping_while_active("ingest_schedule", ingest_job, get_settings().ingest_cron, "Ingest new events")

    @schedule(name="ingest_schedule", job=ingest_job, cron_schedule=get_settings().ingest_cron,
              execution_timezone="UTC", default_status=DefaultScheduleStatus.RUNNING,
              description=f"Ingest new events and decisions with {writers} writers at once, one run per partition "
                          "slot; a slot skips a tick while its previous run is still in progress.")
    def _schedule(context: ScheduleEvaluationContext):
        requests = [
            # A run key per tick and slot: several requests of one tick need keys, and a key is launched only once.
            RunRequest(run_key=f"{context.scheduled_execution_time}/{slot}", tags={INGEST_SLOT_TAG: str(slot)},
                       run_config={"ops": {asset: {"config": {"slot": slot, "writers": writers}}
                                           for asset in ("events", "decision_log")}})
            for slot in range(writers)
            if not context.instance.get_run_records(
                RunsFilter(job_name=ingest_job.name, statuses=_ACTIVE, tags={INGEST_SLOT_TAG: str(slot)}), limit=1)]
        return requests or SkipReason(f"the previous run of each of the {writers} writer slots is still in progress")

    return _schedule


identity_job = define_asset_job("identity", selection=AssetSelection.assets("identity_graph"), tags=_max_runtime(3),
                                description="Stitch the identifiers of newly ingested events into people.")

ingest_schedule = _ingest_schedule(get_settings().ingest_writers)
identity_schedule = _skipping_while_active("identity_schedule", identity_job, get_settings().identity_cron,
                                           "Stitch identities of newly ingested events")

timing_job = define_asset_job("timing", selection=AssetSelection.assets("timing_curves", "timing_evaluation"),
                              tags=_max_runtime(6), description="Rebuild changed timing curves, then evaluate and "
                              "recalibrate.")
timing_schedule = _skipping_while_active("timing_schedule", timing_job, get_settings().timing_cron,
                                         "Rebuild timing curves")

uplift_job = define_asset_job("uplift", selection=AssetSelection.assets("events", "decision_log", "timing_uplift"),
                              tags=_max_runtime(2),
                              description="Ingest new events and decisions, then measure the uplift against control.")
uplift_schedule = _skipping_while_active("uplift_schedule", uplift_job, get_settings().uplift_cron,
                                         "Measure the uplift of treatment over control")
