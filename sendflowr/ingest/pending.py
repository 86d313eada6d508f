"""What ingestion would read now, without reading it: per writer slot and sink, the offset ranges a run would plan
(plan.plan_ranges: a crashed attempt to replay, else from the committed end up to Kafka's high watermark). A trigger
launches a run only where this is not empty (the Dagster sensor, sendflowr_assets/defs/ingest/sensors.py)."""

from __future__ import annotations

from collections.abc import Sequence

from clickhouse_connect.driver.client import Client

from sendflowr.cluster import consistency
from sendflowr.ingest import consume
from sendflowr.ingest.plan import OffsetRange, plan_ranges
from sendflowr.ingest.sink import Sink
from sendflowr.ingest.slots import Slot
from sendflowr.kafka_io import list_topics
from sendflowr.settings import Settings


def next_ranges(settings: Settings, client: Client, sinks: Sequence[Sink], writers: int
                ) -> dict[int, dict[str, list[OffsetRange]]]:
    """slot index -> sink name -> the ranges a run of that slot would read first; slots and sinks with nothing
    new are left out. A sink whose topic is off or not created yet has nothing new."""
    found: dict[int, dict[str, list[OffsetRange]]] = {}
    consumer = consume.make_consumer(settings)
    try:
        topics = list_topics(consumer).topics
        for sink in sinks:
            topic = sink.topic(settings)
            if not topic or topic not in topics:
                continue
            marks = consume.watermarks(consumer, topic)
            for index in range(writers):
                plan = plan_ranges(client, settings.clickhouse_database, topic, marks,
                                   settings.ingest_max_messages_per_partition, Slot(index, writers),
                                   consistency(settings))
                if plan.ranges:
                    found.setdefault(index, {})[sink.name] = plan.ranges
    finally:
        consumer.close()
    return found
