"""A synthetic world straight into a database's `events` (no Kafka), stitched, with its ground truth on disk:
what the timing evaluation over several worlds (bench/timing_quality.py) and the tests start from.

Events go in as ingestion would leave them: one row per distinct event_id (the stream's duplicate copies are
dropped), the contract's columns, one committed ingest range covering them, so every timing and identity
query sees them exactly as it sees ingested events.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from clickhouse_connect.driver.client import Client

from sendflowr.settings import Settings
from sendflowr.synth.stream import iter_event_batches
from sendflowr.synth.truth import write_ground_truth
from sendflowr.synth.world import World

TOPIC = "synthetic.world"
TEXT = ("event_id", "event_type", "email", "klaviyo_id", "phone", "external_id", "esp", "message_id", "campaign_id",
        "user_agent", "ip", "url", "bounce_type")


def _text(table: pa.Table, name: str) -> pa.Array:
    col = table.column(name).combine_chunks()
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    return pc.fill_null(col.cast(pa.string()), "")


@dataclass
class SignalTruth:
    """What really happened, counted from the world's own event origins (for the cleaning rules' figures)."""

    events: int = 0
    delivered_messages: int = 0
    engaged_messages: int = 0  # delivered messages with a genuine (human) open or click the ESP reported
    machine_opens: int = 0
    scanner_clicks: int = 0
    human_opens: int = 0


def load_events(client: Client, database: str, world: World, batch_size: int = 200_000) -> SignalTruth:
    """Insert the world's distinct events and one committed range over them; returns the truth's counts."""
    offset = 0
    truth = SignalTruth()
    delivered, engaged = [], []
    for batch in iter_event_batches(world, batch_size):
        batch = batch.filter(pc.invert(batch.column("_duplicate").combine_chunks()))
        n = batch.num_rows
        ids = {name: _text(batch, name) for name in TEXT}
        origin, etype = _text(batch, "_origin"), ids["event_type"]
        human = pc.equal(origin, "human")
        opened, clicked = pc.equal(etype, "opened"), pc.equal(etype, "clicked")
        delivered.append(pc.filter(ids["message_id"], pc.equal(etype, "delivered")))
        engaged.append(pc.filter(ids["message_id"], pc.and_(human, pc.or_(opened, clicked))))
        truth.machine_opens += pc.sum(pc.and_(opened, pc.equal(origin, "apple_mpp"))).as_py() or 0
        truth.scanner_clicks += pc.sum(pc.and_(clicked, pc.equal(origin, "scanner"))).as_py() or 0
        truth.human_opens += pc.sum(pc.and_(opened, human)).as_py() or 0
        machine = pc.fill_null(batch.column("machine_open").combine_chunks(), False).cast(pa.uint8())
        client.insert_arrow(f"{database}.events", pa.table(ids | {
            "occurred_at": batch.column("_ts").combine_chunks(),
            "person_key": pc.utf8_lower(ids["email"]),
            "machine_open": machine,
            "kafka_topic": pa.array(np.full(n, TOPIC), pa.string()),
            "kafka_partition": pa.array(np.zeros(n, np.uint32)),
            "kafka_offset": pa.array(np.arange(offset, offset + n, dtype=np.uint64))}))
        offset += n
    delivered_ids = pc.unique(pa.chunked_array(delivered, pa.string()))
    engaged_ids = pc.unique(pa.chunked_array(engaged, pa.string()))
    truth.events, truth.delivered_messages = offset, len(delivered_ids)
    truth.engaged_messages = pc.sum(pc.is_in(engaged_ids, value_set=delivered_ids)).as_py() or 0
    client.insert(f"{database}.ingest_ranges", [[TOPIC, 0, 0, offset, "committed", "worldload", offset, offset, 0]],
                  column_names=["kafka_topic", "kafka_partition", "start_offset", "end_offset", "state", "run_id",
                                "messages", "valid", "rejected"])
    return truth


def load_world(settings: Settings, client: Client, world: World, truth_dir: Path,
               log: Callable[[str], None] = print) -> SignalTruth:
    """Ground truth to truth_dir, events into settings' database (migrated), identity stitched."""
    from sendflowr.identity.run import stitch_once

    write_ground_truth(world, truth_dir)
    truth = load_events(client, settings.clickhouse_database, world)
    report = stitch_once(settings, client, log=lambda _: None)
    log(f"world loaded: {truth.events:,} events, {report.people_total:,} people stitched")
    return truth
