"""Read fixed offset ranges from Kafka into columns; no per-message parsing happens in Python."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from sendflowr.errors import SendflowrError
from sendflowr.ingest.plan import OffsetRange, Watermarks
from sendflowr.kafka_io import client_config, list_topics
from sendflowr.settings import Settings


def make_consumer(settings: Settings, group: str | None = None) -> Consumer:
    return Consumer({
        **client_config(settings),
        "group.id": group or settings.kafka_consumer_group,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "fetch.max.bytes": 64 * 1024 * 1024,
        "max.partition.fetch.bytes": 16 * 1024 * 1024,
        "queued.max.messages.kbytes": 512 * 1024,
        "fetch.wait.max.ms": 50,
    })


def watermarks(consumer: Consumer, topic: str, timeout: float = 15.0) -> dict[int, Watermarks]:
    try:
        meta = list_topics(consumer, topic, timeout=timeout).topics.get(topic)
    except KafkaException as exc:  # a refusal (KafkaRefused) is no KafkaException: it goes up as it is
        raise SendflowrError(f"Kafka did not answer for topic {topic!r}: {exc}") from exc
    if meta is None or meta.error is not None or not meta.partitions:
        raise SendflowrError(f"Kafka topic {topic!r} does not exist (create it with `sendflowr kafka topic`)")
    marks = {}
    for partition in sorted(meta.partitions):
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout)
        marks[partition] = Watermarks(low, high)
    return marks


@dataclass
class Batch:
    table: pa.Table  # kafka_partition, kafka_offset, raw: only offsets inside the ranges
    read_through: dict[int, int]  # per partition, every offset below this one was read (or does not exist)


def read_ranges(consumer: Consumer, ranges: list[OffsetRange], batch_messages: int = 200_000,
                idle_timeout: float = 30.0) -> Iterator[Batch]:
    """Yield batches holding exactly the offsets of `ranges`; the last one has read every range through."""
    if not ranges:
        return
    topic = ranges[0].topic
    ends = {r.partition: r.end for r in ranges}
    end_of = np.zeros(max(ends) + 1, dtype=np.int64)
    for partition, end in ends.items():
        end_of[partition] = end
    consumer.assign([TopicPartition(r.topic, r.partition, r.start) for r in ranges])
    # librdkafka keeps a partition paused across unassign/assign: undo _pause_finished of an earlier round.
    consumer.resume([TopicPartition(r.topic, r.partition) for r in ranges])
    last_seen = {r.partition: r.start - 1 for r in ranges}
    parts: list[np.ndarray] = []
    offsets: list[np.ndarray] = []
    values: list[bytes | None] = []
    pending = 0
    last_message_at = time.monotonic()
    try:
        while any(last_seen[p] < ends[p] - 1 for p in ends):
            messages = consumer.consume(num_messages=min(20_000, batch_messages), timeout=0.5)
            if not messages:
                if _caught_up(consumer, topic, ends, last_seen):
                    break
                if time.monotonic() - last_message_at > idle_timeout:
                    missing = {p: (last_seen[p] + 1, ends[p]) for p in ends if last_seen[p] < ends[p] - 1}
                    raise SendflowrError(f"Kafka returned no messages for {idle_timeout:.0f}s while offsets "
                                         f"{missing} of {topic!r} were still to read")
                continue
            last_message_at = time.monotonic()
            messages = _without_errors(messages, topic)
            # Column-wise: one C-level map per field instead of a Python loop per message.
            part = np.fromiter(map(Message.partition, messages), dtype=np.int64, count=len(messages))
            offset = np.fromiter(map(Message.offset, messages), dtype=np.int64, count=len(messages))
            values += map(Message.value, messages)
            parts.append(part)
            offsets.append(offset)
            pending += len(messages)
            for p in ends:
                mine = offset[part == p]
                if mine.size:  # a partition arrives in offset order: its largest offset read so far
                    last_seen[p] = max(last_seen[p], min(int(mine.max()), ends[p] - 1))
            if pending >= batch_messages:
                yield Batch(_table(parts, offsets, values, end_of), {p: last_seen[p] + 1 for p in ends})
                parts, offsets, values, pending = [], [], [], 0
            _pause_finished(consumer, topic, ends, last_seen)
        yield Batch(_table(parts, offsets, values, end_of), dict(ends))
    finally:
        consumer.unassign()


def _without_errors(messages: list[Message], topic: str) -> list[Message]:
    if not any(map(Message.error, messages)):  # the common case, in one C-level pass
        return messages
    failed = [m for m in messages if m.error() is not None]
    for message in failed:
        if message.error().code() != KafkaError._PARTITION_EOF:
            raise SendflowrError(f"Kafka error while reading {topic!r}: {message.error()}")
    return [m for m in messages if m.error() is None]


def _pause_finished(consumer: Consumer, topic: str, ends: dict[int, int], last_seen: dict[int, int]) -> None:
    done = [TopicPartition(topic, p) for p in ends if last_seen[p] >= ends[p] - 1]
    if done:
        consumer.pause(done)


def _caught_up(consumer: Consumer, topic: str, ends: dict[int, int], last_seen: dict[int, int]) -> bool:
    # Offsets can have holes (transaction markers, compaction): done when the fetch position passed the end.
    positions = consumer.position([TopicPartition(topic, p) for p in ends])
    return all(last_seen[tp.partition] >= ends[tp.partition] - 1 or tp.offset >= ends[tp.partition]
               for tp in positions)


def _table(parts: list[np.ndarray], offsets: list[np.ndarray], values: list[bytes | None],
           end_of: np.ndarray) -> pa.Table:
    part = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    offset = np.concatenate(offsets) if offsets else np.zeros(0, dtype=np.int64)
    table = pa.table({
        "kafka_partition": pa.array(part.astype(np.uint32)),
        "kafka_offset": pa.array(offset.astype(np.uint64)),
        "raw": pa.array(values, type=pa.binary()).fill_null(b""),  # a null (tombstone) value is an empty payload
    })
    inside = offset < end_of[part]  # prefetched messages past a range's end belong to a later run
    return table if inside.all() else table.filter(pa.array(inside))


def commit_group_offsets(consumer: Consumer, ranges: list[OffsetRange], attempts: int = 5) -> str | None:
    """Mirror committed progress into the consumer group, so standard Kafka tools show our lag.

    ClickHouse's ingest_ranges is the source of truth; this mirror is best effort (a fresh broker answers
    COORDINATOR_LOAD_IN_PROGRESS for a while), so it retries and then returns the error instead of raising.
    """
    if not ranges:
        return None
    offsets = [TopicPartition(r.topic, r.partition, r.end) for r in ranges]
    error: KafkaException | None = None
    for attempt in range(attempts):
        try:
            consumer.commit(offsets=offsets, asynchronous=False)
            return None
        except KafkaException as exc:
            error = exc
            time.sleep(0.2 * 2**attempt)
    return str(error)


def group_lag(consumer: Consumer, topic: str, marks: dict[int, Watermarks], next_offsets: dict[int, int]
              ) -> dict[int, int]:
    return {p: max(0, m.high - next_offsets.get(p, m.low)) for p, m in marks.items()}
