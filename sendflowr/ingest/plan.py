"""Which offsets a run ingests: fixed ranges per partition, recorded before they are read.

A range recorded as 'planned' but never 'committed' belongs to a run that died; the next run replays
exactly that range (same offsets, same deduplication token) before planning anything new. With several writer
slots (slots.py) a writer plans and replays only partitions its slot owns; a crashed attempt is replayed
whole, with the ranges it had (grouped by the run that planned them), or not at all.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from clickhouse_connect.driver.client import Client

from sendflowr.cluster import ONE_SERVER, Consistency, retrying
from sendflowr.errors import SendflowrError
from sendflowr.ingest.slots import WHOLE, Slot


@dataclass(frozen=True, order=True)
class OffsetRange:
    topic: str
    partition: int
    start: int  # first offset, inclusive
    end: int  # exclusive

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def token(self) -> str:
        """Insert deduplication token: the same range always yields the same token."""
        return f"{self.topic}:{self.partition}:{self.start}-{self.end}"


def attempt_token(ranges: list[OffsetRange]) -> str:
    """Insert deduplication token of one attempt: the same set of ranges always yields the same token."""
    spec = ",".join(f"{r.topic}:{r.partition}:{r.start}-{r.end}" for r in sorted(ranges))
    return hashlib.sha256(spec.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Watermarks:
    low: int
    high: int


@dataclass
class Plan:
    ranges: list[OffsetRange]
    replay: bool  # True when these ranges finish a crashed run
    skipped_by_retention: dict[int, int]  # partition -> offsets deleted by Kafka before we read them


def _state(client: Client, database: str, topic: str, consistency: Consistency
           ) -> tuple[dict[int, int], dict[OffsetRange, str]]:
    """(next offset per partition, each range planned but never committed -> the run that first planned it)."""
    rows = retrying(lambda: client.query(
        f"SELECT kafka_partition, start_offset, end_offset, max(state) = 'committed' AS done, min(run_id) "
        f"FROM {database}.ingest_ranges WHERE kafka_topic = {{topic:String}} "
        f"GROUP BY kafka_partition, start_offset, end_offset",
        parameters={"topic": topic}, settings=dict(consistency.read),
    ).result_rows)
    committed: dict[int, int] = {}
    pending: dict[OffsetRange, str] = {}
    for partition, start, end, done, run in rows:
        if done:
            committed[partition] = max(committed.get(partition, 0), end)
        else:
            pending[OffsetRange(topic, partition, start, end)] = run
    return committed, {r: run for r, run in pending.items() if r.start >= committed.get(r.partition, 0)}


def ingestion_state(client: Client, database: str, topic: str, consistency: Consistency = ONE_SERVER
                    ) -> tuple[dict[int, int], list[OffsetRange]]:
    """(next offset per partition, ranges planned but never committed)."""
    committed, pending = _state(client, database, topic, consistency)
    return committed, sorted(pending)


def plan_ranges(client: Client, database: str, topic: str, watermarks: dict[int, Watermarks],
                max_per_partition: int, slot: Slot = WHOLE, consistency: Consistency = ONE_SERVER) -> Plan:
    committed, pending = _state(client, database, topic, consistency)
    mine = sorted(r for r in pending if slot.owns(r.partition))
    if mine:
        # One crashed attempt at a time, all of its ranges (they share one deduplication token).
        planner = pending[mine[0]]
        attempt = sorted(r for r, run in pending.items() if run == planner)
        foreign = sorted({r.partition for r in attempt if not slot.owns(r.partition)})
        if foreign:
            raise SendflowrError(
                f"run {planner} died in an attempt over partitions {sorted({r.partition for r in attempt})} of "
                f"{topic!r}, but writer slot {slot} does not own partitions {foreign} (the writer layout changed "
                "since). Replay it with one writer over the whole topic (SENDFLOWR_INGEST_WRITERS=1) for one run, "
                "then start the slots again.")
        return Plan(attempt, replay=True, skipped_by_retention={})
    ranges: list[OffsetRange] = []
    skipped: dict[int, int] = {}
    for partition, marks in sorted(watermarks.items()):
        if not slot.owns(partition):
            continue
        start = committed.get(partition, marks.low)
        if start < marks.low:
            skipped[partition] = marks.low - start
            start = marks.low
        end = min(marks.high, start + max_per_partition)
        if end > start:
            ranges.append(OffsetRange(topic, partition, start, end))
    return Plan(ranges, replay=False, skipped_by_retention=skipped)


def record_ranges(client: Client, database: str, ranges: list[OffsetRange], state: str, run_id: str,
                  stats: dict[int, tuple[int, int, int]] | None = None, sink: str = "events",
                  consistency: Consistency = ONE_SERVER) -> None:
    rows = []
    for r in ranges:
        messages, valid, rejected = (stats or {}).get(r.partition, (0, 0, 0))
        rows.append([r.topic, sink, r.partition, r.start, r.end, state, run_id, messages, valid, rejected])
    if rows:
        retrying(lambda: client.insert(
            f"{database}.ingest_ranges", rows, settings=dict(consistency.write),
            column_names=["kafka_topic", "sink", "kafka_partition", "start_offset", "end_offset", "state", "run_id",
                          "messages", "valid", "rejected"]))
