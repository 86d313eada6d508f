"""The ingestion sensor: a run only when Kafka holds messages not ingested yet.

Every SENDFLOWR_INGEST_POLL_SECONDS it compares the high watermarks of the events topic and the decision log's topic
with the committed offset ranges in ClickHouse (sendflowr.ingest.pending). Each writer slot (SENDFLOWR_INGEST_WRITERS,
docs/INGESTION.md "Several writers") with something new and no run still in progress gets one run of
`ingest_events`, over only the assets whose topic has something new. The run key is derived from the offset ranges the
run will read, so the same ranges are never requested twice: nothing new, no run. A run that fails is retried by
Dagster (`dagster/max_retries`, where the instance enables run retries); after that the next new message, or a run
launched from the UI, carries on from the committed offsets.
"""

from __future__ import annotations

import hashlib

from dagster import (
    AssetKey,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from sendflowr.decisions.log_ingest import DECISIONS
from sendflowr.ingest.pending import next_ranges
from sendflowr.ingest.plan import OffsetRange
from sendflowr.ingest.sink import EVENTS
from sendflowr.settings import get_settings
from sendflowr_assets.jobs import ACTIVE
from sendflowr_assets.resources import SendflowrResource

INGEST_JOB = "ingest_events"
INGEST_SLOT_TAG = "sendflowr/ingest_slot"
RANGES_TAG = "sendflowr/ingest_ranges"
ASSETS = {"events": EVENTS, "decision_log": DECISIONS}  # asset -> the sink it ingests


def run_key(slot: int, writers: int, ranges: dict[str, list[OffsetRange]]) -> str:
    """The same offset ranges always give the same key (Dagster launches a key once)."""
    spec = ";".join(f"{asset}={r.token}" for asset in sorted(ranges) for r in sorted(ranges[asset]))
    return f"slot {slot}/{writers} {hashlib.sha256(spec.encode()).hexdigest()[:20]}"


def _summary(ranges: dict[str, list[OffsetRange]]) -> str:
    return "; ".join(f"{asset}: {sum(r.size for r in rs)} offsets in {len(rs)} partition(s)"
                     for asset, rs in sorted(ranges.items()))


def requests(context: SensorEvaluationContext, sendflowr: SendflowrResource, writers: int
             ) -> SensorResult | SkipReason:
    by_sink = next_ranges(sendflowr.settings(), sendflowr.client(), list(ASSETS.values()), writers)
    if not by_sink:
        return SkipReason("nothing new in Kafka: every offset of the events and decision log topics is ingested")
    runs, busy = [], []
    for slot, sinks in sorted(by_sink.items()):
        if context.instance.get_run_records(
                RunsFilter(job_name=INGEST_JOB, statuses=ACTIVE, tags={INGEST_SLOT_TAG: str(slot)}), limit=1):
            busy.append(slot)  # its run reads on from the committed offsets when it ends
            continue
        ranges = {asset: sinks[sink.name] for asset, sink in ASSETS.items() if sink.name in sinks}
        runs.append(RunRequest(
            run_key=run_key(slot, writers, ranges), asset_selection=[AssetKey(asset) for asset in sorted(ranges)],
            tags={INGEST_SLOT_TAG: str(slot), RANGES_TAG: _summary(ranges)[:1000]},
            run_config={"ops": {asset: {"config": {"slot": slot, "writers": writers}} for asset in sorted(ranges)}}))
    if not runs:
        return SkipReason(f"new messages for writer slot(s) {busy}, whose previous run is still in progress")
    return SensorResult(run_requests=runs)


@sensor(name="ingest_sensor", job_name=INGEST_JOB, minimum_interval_seconds=get_settings().ingest_poll_seconds,
        default_status=DefaultSensorStatus.RUNNING,
        description="Launches an ingestion run per writer slot when Kafka holds messages not ingested yet (high "
                    "watermarks vs committed offset ranges); the run key is derived from the ranges it will read.")
def ingest_sensor(context: SensorEvaluationContext, sendflowr: SendflowrResource) -> SensorResult | SkipReason:
    return requests(context, sendflowr, get_settings().ingest_writers)
