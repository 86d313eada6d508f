"""Identity: the `identity_graph` asset (eager: after new events), its checks and the `identity` job."""

from dagster import AssetSelection, Definitions, define_asset_job

from sendflowr_assets.defs.identity.assets import identity_graph
from sendflowr_assets.defs.identity.checks import IDENTITY_CHECKS
from sendflowr_assets.jobs import max_runtime

identity_job = define_asset_job("identity", selection=AssetSelection.assets("identity_graph"), tags=max_runtime(3),
                                description="Stitch the identifiers of newly ingested events into people.")

defs = Definitions(assets=[identity_graph], asset_checks=IDENTITY_CHECKS, jobs=[identity_job])
