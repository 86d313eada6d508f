"""Kafka helpers shared by every producer and consumer: topic creation, producing with confirmed delivery.

Works against any Kafka by bootstrap servers; nothing here knows whether the broker is the local one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from sendflowr.errors import SendflowrError
from sendflowr.settings import Settings


class KafkaUnavailable(SendflowrError):
    pass


def admin_client(settings: Settings) -> AdminClient:
    # librdkafka's own log goes to Python logging: an unreachable broker would otherwise print a
    # "Connection refused" line to stderr every 50 ms before our one clear error.
    return AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers,
                        "logger": logging.getLogger("sendflowr.kafka")})


def ensure_topic(settings: Settings, topic: str | None = None, partitions: int | None = None,
                 timeout: float = 30.0) -> bool:
    """Create the topic if it is missing; True when this call created it. Safe to call from many places."""
    name = topic or settings.kafka_topic
    admin = admin_client(settings)
    try:
        existing = admin.list_topics(timeout=timeout).topics
    except KafkaException as exc:
        raise KafkaUnavailable(
            f"Kafka at {settings.kafka_bootstrap_servers} did not answer within {timeout:.0f}s: {exc}"
        ) from exc
    if name in existing:
        return False
    new = NewTopic(name, num_partitions=partitions or settings.kafka_partitions,
                   replication_factor=settings.kafka_replication_factor)
    future = admin.create_topics([new], operation_timeout=timeout)[name]
    try:
        future.result(timeout=timeout)
    except KafkaException as exc:
        if exc.args and exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
            return False  # another process won the race
        raise
    return True


def producer_config(settings: Settings, **overrides: object) -> dict[str, object]:
    # Idempotence makes broker-side retries safe: a retried batch is never written twice.
    config: dict[str, object] = {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 20,
        "batch.size": 1_000_000,
        "compression.type": "lz4",
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1_048_576,
        "logger": logging.getLogger("sendflowr.kafka"),  # librdkafka's chatter to logging, not stderr
    }
    config.update(overrides)
    return config


@dataclass
class ProduceReport:
    sent: int = 0
    failed: int = 0
    first_error: str | None = None


def produce_all(
    settings: Settings,
    messages: Iterable[tuple[bytes | None, bytes]],
    topic: str | None = None,
    on_progress: Callable[[int], None] | None = None,
    producer: Producer | None = None,
) -> ProduceReport:
    """Produce (key, value) pairs and wait until the broker confirmed every one.

    Raises KafkaUnavailable if any message was not delivered, so callers never report success for a
    partial write.
    """
    name = topic or settings.kafka_topic
    own = producer is None
    producer = producer or Producer(producer_config(settings))
    report = ProduceReport()

    def on_delivery(err, _msg) -> None:
        if err is None:
            report.sent += 1
        else:
            report.failed += 1
            report.first_error = report.first_error or str(err)

    pending = 0
    for key, value in messages:
        while True:
            try:
                producer.produce(name, value=value, key=key, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)  # local queue full: let deliveries drain
        pending += 1
        if pending >= 10_000:
            producer.poll(0)
            if on_progress:
                on_progress(pending)
            pending = 0
    remaining = producer.flush(120)
    if on_progress and pending:
        on_progress(pending)
    if remaining or report.failed:
        raise KafkaUnavailable(
            f"{report.failed + remaining} message(s) not confirmed by {settings.kafka_bootstrap_servers}: "
            f"{report.first_error or 'flush timed out'}"
        )
    if own:
        del producer
    return report
