"""One ingestion run: lease, plan, read, stage, load, commit. Safe to kill at any point and rerun.

Order of effects (docs/INGESTION.md):
  1. lease the topic (one writer at a time)      4. insert event_ids, events and rejects, each with
  2. record planned ranges                          a deduplication token derived from the ranges
  3. stage the raw messages of those ranges       5. record the ranges committed, then mirror the
     (ClickHouse parses and validates them)          offsets into the Kafka consumer group
A crash before 5 leaves 'planned' ranges that the next run replays byte-for-byte; the engine then drops
the blocks it already has by their token.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
from clickhouse_connect.driver.client import Client

from sendflowr.ingest import consume, lease, plan
from sendflowr.ingest.plan import OffsetRange
from sendflowr.settings import Settings
from sendflowr.sql_files import load_sql

STAGING_IN_FLIGHT = 2
# A total ORDER BY, one insert thread and row-count squashing make an INSERT ... SELECT build the same
# blocks on a replay; the SELECT itself may read and sort with every core.
DETERMINISTIC_INSERT = {"max_insert_threads": 1, "max_block_size": 65536,
                        "min_insert_block_size_rows": 1_048_576, "min_insert_block_size_bytes": 0}
EVENT_COLUMNS = ("event_id, event_type, occurred_at, person_key, email, klaviyo_id, phone, external_id, esp, "
                 "message_id, campaign_id, user_agent, ip, url, bounce_type, machine_open, bot_click, "
                 "schema_version, kafka_topic, kafka_partition, kafka_offset")


@dataclass(frozen=True)
class IngestOptions:
    max_messages_per_partition: int = 1_000_000
    until_caught_up: bool = False  # keep running ranges until the lag is zero (manual catch-up)
    batch_messages: int = 50_000


@dataclass
class PartitionStats:
    start: int
    end: int
    messages: int = 0
    valid: int = 0
    rejected: int = 0


@dataclass
class IngestReport:
    run_id: str
    topic: str
    replayed: bool = False
    partitions: dict[int, PartitionStats] = field(default_factory=dict)
    lag: dict[int, int] = field(default_factory=dict)
    skipped_by_retention: dict[int, int] = field(default_factory=dict)
    seconds: float = 0.0
    inserted: int = 0  # new events written to `events`
    duplicates: int = 0  # valid messages whose event_id was already known or repeated

    @property
    def messages(self) -> int:
        return sum(p.messages for p in self.partitions.values())

    @property
    def rejected(self) -> int:
        return sum(p.rejected for p in self.partitions.values())

    @property
    def events_per_second(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0

    @property
    def rejected_share(self) -> float:
        return self.rejected / self.messages if self.messages else 0.0


class Hooks:
    """Test seams at the dangerous points; production runs use the no-op defaults."""

    def after_insert(self, table: str) -> None: ...

    def after_stage(self) -> None: ...


def ingest_once(settings: Settings, client: Client, options: IngestOptions = IngestOptions(),
                run_id: str | None = None, log: Callable[[str], None] = print, hooks: Hooks | None = None
                ) -> IngestReport:
    run_id = run_id or f"ingest-{uuid.uuid4().hex[:12]}"
    hooks = hooks or Hooks()
    database, topic = settings.clickhouse_database, settings.kafka_topic
    report = IngestReport(run_id=run_id, topic=topic)
    started = time.perf_counter()
    consumer = consume.make_consumer(settings)
    try:
        with lease.ingest_lease(client, database, topic, run_id) as holder:
            _drop_stale_staging(client, database)
            while True:
                marks = consume.watermarks(consumer, topic)
                work = plan.plan_ranges(client, database, topic, marks, options.max_messages_per_partition)
                report.replayed |= work.replay
                for partition, lost in work.skipped_by_retention.items():
                    report.skipped_by_retention[partition] = report.skipped_by_retention.get(partition, 0) + lost
                    log(f"partition {partition}: {lost} offsets were deleted by Kafka retention before ingestion")
                if not work.ranges:
                    break
                _run_ranges(settings, client, consumer, work.ranges, run_id, options, report, log, hooks)
                lease.renew(client, database, topic, holder)
                if not (options.until_caught_up or work.replay):
                    break
            committed, _ = plan.ingestion_state(client, database, topic)
            report.lag = consume.group_lag(consumer, topic, consume.watermarks(consumer, topic), committed)
    finally:
        consumer.close()
    report.seconds = time.perf_counter() - started
    return report


def _run_ranges(settings: Settings, client: Client, consumer, ranges: list[OffsetRange], run_id: str,
                options: IngestOptions, report: IngestReport, log: Callable[[str], None], hooks: Hooks) -> None:
    database, topic = settings.clickhouse_database, settings.kafka_topic
    attempt = f"{run_id}-{uuid.uuid4().hex[:8]}"
    plan.record_ranges(client, database, ranges, "planned", run_id)
    total = sum(r.size for r in ranges)
    log(f"reading {total} messages from {len(ranges)} partition(s) of {topic!r}")
    read = 0
    # Stage while reading: Kafka polling (this thread) overlaps ClickHouse's parsing of the previous
    # batch (another process), with at most STAGING_IN_FLIGHT inserts outstanding.
    with ThreadPoolExecutor(max_workers=STAGING_IN_FLIGHT, thread_name_prefix="stage") as pool:
        in_flight: deque[Future] = deque()
        for table in consume.read_ranges(consumer, ranges, batch_messages=options.batch_messages):
            staged = table.append_column("attempt_id", _constant(attempt, table.num_rows)) \
                          .append_column("kafka_topic", _constant(topic, table.num_rows))
            in_flight.append(pool.submit(client.insert_arrow, f"{database}.ingest_staging", staged))
            read += table.num_rows
            while len(in_flight) >= STAGING_IN_FLIGHT:
                in_flight.popleft().result()
            log(f"staged {read}/{total} messages")
        for future in in_flight:
            future.result()
    log(f"staged {read} messages; ClickHouse parsed and validated them")
    hooks.after_stage()
    params = {"attempt": attempt, "topic": topic, "partitions": [r.partition for r in ranges],
              "starts": [r.start for r in ranges], "ends": [r.end for r in ranges]}
    token = plan.attempt_token(ranges)
    new_events = load_sql("ingest/new_events.sql", database)
    try:
        # event_ids first: a crash before `events` is written then replays both with the same tokens.
        ids = client.command(
            f"INSERT INTO {database}.event_ids (event_id, kafka_topic, kafka_partition, kafka_offset) "
            f"SELECT event_id, kafka_topic, kafka_partition, kafka_offset FROM ({new_events})",
            parameters=params, settings={**DETERMINISTIC_INSERT, "insert_deduplication_token": f"{token}:ids"})
        hooks.after_insert("event_ids")
        client.command(
            f"INSERT INTO {database}.events ({EVENT_COLUMNS}) SELECT {EVENT_COLUMNS} FROM ({new_events})",
            parameters=params, settings={**DETERMINISTIC_INSERT, "insert_deduplication_token": f"{token}:events"})
        hooks.after_insert("events")
        client.command(load_sql("ingest/insert_rejected.sql", database), parameters=params,
                       settings={**DETERMINISTIC_INSERT, "insert_deduplication_token": f"{token}:rejected"})
        hooks.after_insert("rejected_events")
        stats = _range_stats(client, database, ranges, params, ids.written_rows, report, log)
        plan.record_ranges(client, database, ranges, "committed", run_id, stats)
        mirror_error = consume.commit_group_offsets(consumer, ranges)
        if mirror_error:
            log(f"offsets are committed in ClickHouse, but mirroring them to consumer group "
                f"{consume.CONSUMER_GROUP!r} failed: {mirror_error}")
    finally:
        # attempt ids are generated hex, safe as a literal (partition expressions take no parameters)
        client.command(f"ALTER TABLE {database}.ingest_staging DROP PARTITION '{attempt}'")


def _range_stats(client: Client, database: str, ranges: list[OffsetRange], params: dict, inserted: int,
                 report: IngestReport, log: Callable[[str], None]) -> dict[int, tuple[int, int, int]]:
    """Per partition: messages, valid, rejected (from staging); new events are counted for the attempt."""
    staged = {row[0]: row[1:] for row in client.query(
        load_sql("ingest/range_counts.sql", database), parameters=params).result_rows}
    stats: dict[int, tuple[int, int, int]] = {}
    for rng in ranges:
        messages, rejected, valid = staged.get(rng.partition, (0, 0, 0))
        if messages != rng.size:
            log(f"partition {rng.partition}: {rng.size - messages} offsets in [{rng.start}, {rng.end}) had no "
                "message (compaction or transaction markers)")
        stats[rng.partition] = (messages, valid, rejected)
        report.partitions[rng.partition] = PartitionStats(rng.start, rng.end, messages, valid, rejected)
    valid_total = sum(s[1] for s in stats.values())
    report.inserted += inserted
    report.duplicates += valid_total - inserted
    log(f"{inserted} events inserted, {valid_total - inserted} duplicates dropped, "
        f"{sum(s[2] for s in stats.values())} rejected")
    return stats


def _drop_stale_staging(client: Client, database: str) -> None:
    # Only the lease holder stages, so every partition left behind belongs to a dead attempt.
    client.command(f"TRUNCATE TABLE {database}.ingest_staging")


def _constant(value: str, rows: int) -> pa.Array:
    return pa.array([value], type=pa.string()).take(np.zeros(rows, dtype=np.int32))
