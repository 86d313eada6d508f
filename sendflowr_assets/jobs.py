"""What every domain's jobs share: the run-time limit tag, the statuses of a run still in progress, and the job of
every asset (the demo's `sendflowr_all`)."""

from dagster import AssetSelection, DagsterRunStatus, define_asset_job


def max_runtime(hours: float) -> dict[str, str]:
    # Where run monitoring is on (docker-compose's instance), a run still going after this is terminated: a hung
    # or orphaned run would otherwise hold its pool and its lease. Progress is committed per range, so the next run
    # carries on.
    return {"dagster/max_runtime": str(int(hours * 3600))}


ACTIVE = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED]

all_assets_job = define_asset_job("sendflowr_all", selection=AssetSelection.all(), tags=max_runtime(12),
                                  description="Materialize every SendFlowr asset (the demo's main job).")
