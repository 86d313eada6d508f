"""One ingestion run of one topic: lease, plan, read, stage, load, commit. Safe to kill at any point and rerun.

Order of effects (docs/INGESTION.md):
  1. lease the writer's slot of the topic        4. insert the sink's rows and rejects (events: event_ids,
  2. plan ranges, split them into attempts          events, rejects), each with a deduplication token
  3. stage an attempt's raw messages (ClickHouse    derived from the ranges
     parses and validates them), then record its 5. record the ranges committed, then mirror the
     ranges planned                                 offsets into the Kafka consumer group
Attempts load strictly one after another while the next one is read and staged. A crash before 5 leaves
one attempt's 'planned' ranges that the next run replays byte-for-byte; the engine then drops the blocks
it already has by their token. What is staged and loaded is the sink's (sink.py): the events topic and the
decision log share this one mechanism. Writers of other slots (other partitions, slots.py) run at the same
time; for events they take turns only for the event-id section of 4 (sink.py)."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
from clickhouse_connect.driver.client import Client

from sendflowr import lease
from sendflowr.cluster import consistency
from sendflowr.ingest import consume, plan
from sendflowr.ingest.plan import OffsetRange
from sendflowr.ingest.sink import EVENTS, Hooks, Sink
from sendflowr.ingest.slots import WHOLE, Slot, parse_scope
from sendflowr.settings import Settings

__all__ = ["Hooks", "IngestOptions", "IngestReport", "ingest_once"]

ATTEMPTS_IN_FLIGHT = 2  # read, staged or loading but not yet committed


@dataclass(frozen=True)
class IngestOptions:
    max_messages_per_partition: int = 1_000_000
    until_caught_up: bool = False  # keep running ranges until the lag is zero (manual catch-up)
    batch_messages: int = 50_000
    # Messages loaded as one attempt (one set of tokens). Reading the next attempt overlaps the load of
    # this one: smaller attempts overlap more but pay the fixed cost of an attempt more often.
    attempt_messages: int = 200_000
    slot: Slot = WHOLE  # the partitions this writer owns (slots.py); other slots' writers may run at once


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
    inserted: int = 0  # new rows written to the sink's table (events: new events)
    duplicates: int = 0  # valid messages not written because an equal one was (events: a known event_id)

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


def ingest_once(settings: Settings, client: Client, options: IngestOptions = IngestOptions(),
                run_id: str | None = None, log: Callable[[str], None] = print, hooks: Hooks | None = None,
                sink: Sink = EVENTS) -> IngestReport:
    """Ingest the sink's topic (by default the events topic) from where its committed ranges end."""
    run_id = run_id or f"ingest-{uuid.uuid4().hex[:12]}"
    hooks = hooks or Hooks()
    database, topic, slot = settings.clickhouse_database, sink.topic(settings), options.slot
    state = consistency(settings)
    report = IngestReport(run_id=run_id, topic=topic)
    started = time.perf_counter()
    consumer = consume.make_consumer(settings)
    try:
        with lease.hold(client, database, topic, run_id, slot=slot) as holder:
            _drop_stale_staging(client, database, topic, slot, sink)
            while True:
                marks = _owned(consume.watermarks(consumer, topic), slot)
                if not marks:
                    log(f"writer slot {slot} owns no partition of {topic!r}: nothing to ingest")
                    break
                work = plan.plan_ranges(client, database, topic, marks, options.max_messages_per_partition, slot, state)
                report.replayed |= work.replay
                for partition, lost in work.skipped_by_retention.items():
                    report.skipped_by_retention[partition] = report.skipped_by_retention.get(partition, 0) + lost
                    log(f"partition {partition}: {lost} offsets were deleted by Kafka retention before ingestion")
                if not work.ranges:
                    break
                # A replay must load exactly the crashed attempt's ranges again, as one attempt.
                per_attempt = sum(r.size for r in work.ranges) if work.replay else options.attempt_messages
                _run_pass(settings, client, consumer, work.ranges, per_attempt, run_id, options, report, log, hooks,
                          sink)
                lease.renew(client, database, topic, holder, slot=slot)
                if not (options.until_caught_up or work.replay):
                    break
            committed, _ = plan.ingestion_state(client, database, topic, state)
            report.lag = consume.group_lag(consumer, topic, _owned(consume.watermarks(consumer, topic), slot),
                                           committed)
    finally:
        consumer.close()
    report.seconds = time.perf_counter() - started
    return report


def _owned(marks: dict[int, plan.Watermarks], slot: Slot) -> dict[int, plan.Watermarks]:
    return {p: m for p, m in marks.items() if slot.owns(p)}


@dataclass
class _Attempt:
    id: str
    ranges: list[OffsetRange]
    loaded: bool = False
    staged: int = 0  # rows the writer staged; every statement reading the sink's scratch checks this count


def _run_pass(settings: Settings, client: Client, consumer, ranges: list[OffsetRange], per_attempt: int,
              run_id: str, options: IngestOptions, report: IngestReport, log: Callable[[str], None],
              hooks: Hooks, sink: Sink) -> None:
    """Read `ranges` once and load what was read in attempts of about `per_attempt` messages, while the
    next attempt is being read.

    An attempt ends at a batch boundary, where every message read so far lies below the consumer's
    read-through offsets: its ranges run from the previous cut to those offsets, so they are contiguous
    and cover exactly its messages. Three stages overlap: Kafka polling (this thread), ClickHouse parsing
    the previous attempt (stager thread) and loading the one before it (loader thread: attempts in order,
    a failed one stops every later one). At most ATTEMPTS_IN_FLIGHT attempts are held in memory.
    """
    database, topic = settings.clickhouse_database, sink.topic(settings)
    ends = {r.partition: r.end for r in ranges}
    cut = {r.partition: r.start for r in ranges}
    total = sum(r.size for r in ranges)
    log(f"reading {total} messages from {len(ranges)} partition(s) of {topic!r}")
    attempts: list[_Attempt] = []
    tables: list[pa.Table] = []
    read = read_cut = 0  # messages read, and read into attempts already cut
    loads: deque[Future] = deque()
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="load") as loader, \
                ThreadPoolExecutor(max_workers=1, thread_name_prefix="stage") as stager:
            for batch in consume.read_ranges(consumer, ranges, batch_messages=options.batch_messages):
                if batch.table.num_rows:
                    tables.append(batch.table)
                    read += batch.table.num_rows
                    log(f"read {read}/{total} messages")
                finished = all(batch.read_through[p] >= end for p, end in ends.items())
                if sum(t.num_rows for t in tables) >= _target(per_attempt, total, len(attempts), total - read_cut) \
                        or finished:
                    # The id begins with the writer's scope: _drop_stale_staging finds a dead writer's rows by it.
                    attempt = _Attempt(f"{options.slot.scope(topic)}~{run_id}-{uuid.uuid4().hex[:8]}",
                                       [OffsetRange(topic, p, cut[p], batch.read_through[p])
                                        for p in sorted(cut) if batch.read_through[p] > cut[p]])
                    if attempt.ranges:
                        while len(loads) >= ATTEMPTS_IN_FLIGHT:
                            loads.popleft().result()
                        attempts.append(attempt)
                        staged = stager.submit(_stage, client, database, topic, attempt, tables, sink)
                        loads.append(loader.submit(_load_attempt, loads[-1] if loads else None, staged, settings,
                                                   client, attempt, run_id, report, log, hooks, sink))
                        cut, tables, read_cut = dict(batch.read_through), [], read
                for done in [f for f in loads if f.done()]:
                    done.result()  # a failed stage or load stops the read at once
            for future in loads:
                future.result()
    finally:
        for attempt in attempts:
            if not attempt.loaded:
                with contextlib.suppress(Exception):  # the slot's next run deletes it anyway
                    _drop_attempt(client, database, attempt.id, sink)
    mirror_error = consume.commit_group_offsets(consumer, ranges)
    if mirror_error:
        log(f"offsets are committed in ClickHouse, but mirroring them to consumer group "
            f"{settings.kafka_consumer_group!r} failed: {mirror_error}")


def _target(per_attempt: int, total: int, cut_so_far: int, left: int) -> int:
    """Size of the next attempt: half-size first and shrinking last attempts. Reading the first attempt
    alone opens a pass and loading the last one alone closes it, each with a core idle for as long as that
    attempt takes; in between, full attempts keep the fixed cost per attempt low. A pass that fits one
    attempt (a replay always does) stays one attempt."""
    if per_attempt >= total:
        return per_attempt
    if cut_so_far == 0:
        return min(per_attempt, max(per_attempt // 2, 1))
    return min(per_attempt, max(per_attempt // 4, left // 2, 1))


def _stage(client: Client, database: str, topic: str, attempt: _Attempt, tables: list[pa.Table], sink: Sink) -> None:
    """One insert per attempt, one record batch: a replay of the same ranges stages the same rows in one
    block, and every load SELECT orders them totally by (topic, partition, offset), so the replay's
    INSERT ... SELECT builds the same blocks and the engine recognises them by their deduplication tokens
    (tests/test_ingest_exactly_once.py)."""
    if not tables:
        return
    table = pa.concat_tables(tables)
    attempt.staged = table.num_rows
    table = table.append_column("attempt_id", _constant(attempt.id, table.num_rows)) \
                 .append_column("kafka_topic", _constant(topic, table.num_rows)).combine_chunks()
    sink.stage(client, database, table)


def _load_attempt(previous: Future | None, staged: Future, settings: Settings, client: Client, attempt: _Attempt,
                  run_id: str, report: IngestReport, log: Callable[[str], None], hooks: Hooks, sink: Sink) -> None:
    if previous is not None:
        previous.result()  # never load past an attempt that failed: its ranges must be replayed first
    staged.result()
    database, topic, ranges = settings.clickhouse_database, sink.topic(settings), attempt.ranges
    state = consistency(settings)
    try:
        # Planned only now, right before the first insert: at most one attempt is ever left to replay.
        plan.record_ranges(client, database, ranges, "planned", run_id, sink=sink.name, consistency=state)
        log(f"staged attempt {attempt.id}: ClickHouse parsed and validated its messages")
        hooks.after_stage()
        params = {"attempt": attempt.id, "topic": topic, "partitions": [r.partition for r in ranges],
                  "starts": [r.start for r in ranges], "ends": [r.end for r in ranges],
                  "staged": attempt.staged, "known": 0}  # what this attempt's scratch holds (the sink's guard)
        inserted = sink.load(client, database, params, plan.attempt_token(ranges), hooks, state)
        stats = _range_stats(client, database, ranges, params, inserted, report, log, sink)
        plan.record_ranges(client, database, ranges, "committed", run_id, stats, sink=sink.name, consistency=state)
    finally:
        attempt.loaded = True
        _drop_attempt(client, database, attempt.id, sink)


def _drop_attempt(client: Client, database: str, attempt_id: str, sink: Sink) -> None:
    # A Memory table applies the delete at once; it holds at most ATTEMPTS_IN_FLIGHT attempts.
    for table in sink.scratch_tables:
        client.command(f"ALTER TABLE {database}.{table} DELETE WHERE attempt_id = {{attempt:String}}",
                       parameters={"attempt": attempt_id})


def _range_stats(client: Client, database: str, ranges: list[OffsetRange], params: dict, inserted: int,
                 report: IngestReport, log: Callable[[str], None], sink: Sink) -> dict[int, tuple[int, int, int]]:
    """Per partition: messages, valid, rejected (from staging); new rows are counted for the attempt."""
    staged = sink.counts(client, database, params)
    stats: dict[int, tuple[int, int, int]] = {}
    for rng in ranges:
        messages, rejected, valid = staged.get(rng.partition, (0, 0, 0))
        if messages != rng.size:
            log(f"partition {rng.partition}: {rng.size - messages} offsets in [{rng.start}, {rng.end}) had no "
                "message (compaction or transaction markers)")
        stats[rng.partition] = (messages, valid, rejected)
        seen = report.partitions.get(rng.partition)
        report.partitions[rng.partition] = PartitionStats(rng.start, rng.end, messages, valid, rejected) \
            if seen is None else PartitionStats(min(seen.start, rng.start), max(seen.end, rng.end),
                                                seen.messages + messages, seen.valid + valid, seen.rejected + rejected)
    valid_total = sum(s[1] for s in stats.values())
    duplicates = sink.duplicates(valid_total, inserted)
    report.inserted += inserted
    report.duplicates += duplicates
    log(f"{inserted} {sink.name} rows inserted, {duplicates} duplicates dropped, "
        f"{sum(s[2] for s in stats.values())} rejected")
    return stats


def _drop_stale_staging(client: Client, database: str, topic: str, slot: Slot, sink: Sink) -> None:
    """Delete scratch rows of dead attempts: those of any writer whose slot shares a partition with ours (our lease
    excludes them all, also those of an earlier writer layout). Other slots' writers may be staging right now."""
    for table in sink.scratch_tables:
        scopes = [scope for (scope,) in client.query(
            f"SELECT DISTINCT splitByChar('~', attempt_id)[1] FROM {database}.{table}").result_rows]
        dead = [scope for scope in scopes if parse_scope(scope)[0] == topic and parse_scope(scope)[1].overlaps(slot)]
        if dead:
            client.command(f"ALTER TABLE {database}.{table} DELETE WHERE splitByChar('~', attempt_id)[1] "
                           "IN {dead:Array(String)}", parameters={"dead": dead})


def _constant(value: str, rows: int) -> pa.Array:
    return pa.array([value], type=pa.string()).take(np.zeros(rows, dtype=np.int32))
