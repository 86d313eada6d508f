"""Progress of downstream runs over the committed events: what ingestion committed, and a watermark per run kind.

Ingestion commits offset ranges (`ingest_ranges`); a downstream run (identity, timing) keeps its own watermark
table of the same shape (`identity_progress`, `timing_progress`: topic, partition, end offset, run, time). Its
pending work is every partition committed beyond its watermark; the run advances the watermark when it is done.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa
from clickhouse_connect.driver.client import Client

Bounds = dict[tuple[str, int], tuple[int, int]]  # (topic, partition) -> [from, to) offsets


def committed_ends(client: Client, database: str, sink: str = "events") -> dict[tuple[str, int], int]:
    """(topic, partition) -> end of its committed ingest ranges: the rows of `sink` (by default the events)
    downstream runs may read. Other sinks' topics (the decision log) are not events."""
    return {(t, int(p)): int(e) for t, p, e in client.query(
        f"SELECT toString(kafka_topic), kafka_partition, max(end_offset) FROM {database}.ingest_ranges "
        "WHERE state = 'committed' AND sink = {sink:String} GROUP BY kafka_topic, kafka_partition",
        parameters={"sink": sink}).result_rows}


def pending(client: Client, database: str, watermarks: str,
            committed: dict[tuple[str, int], int] | None = None) -> Bounds:
    """(topic, partition) -> [the watermark in table `watermarks`, committed end) for every partition with events
    committed since that run kind last advanced it."""
    committed = committed_ends(client, database) if committed is None else committed
    done = {(t, int(p)): int(e) for t, p, e in client.query(
        f"SELECT toString(kafka_topic), kafka_partition, max(end_offset) FROM {database}.{watermarks} "
        "GROUP BY kafka_topic, kafka_partition").result_rows}
    return {k: (done.get(k, 0), end) for k, end in sorted(committed.items()) if end > done.get(k, 0)}


def advance(client: Client, database: str, watermarks: str, bounds: Bounds, run_id: str) -> None:
    """Move the watermark of table `watermarks` to the end of each of `bounds` (done by run `run_id`)."""
    if not bounds:
        return
    client.insert_arrow(f"{database}.{watermarks}", pa.table({
        "kafka_topic": pa.array([k[0] for k in bounds], pa.string()),
        "kafka_partition": pa.array([k[1] for k in bounds], pa.uint32()),
        "end_offset": pa.array([v[1] for v in bounds.values()], pa.uint64()),
        "run_id": pa.array([run_id] * len(bounds), pa.string()),
        "at": pa.array([datetime.now(UTC)] * len(bounds), pa.timestamp("us", tz="UTC"))}))
