"""Kafka helpers shared by every producer and consumer: topic creation, producing with confirmed delivery.

Works against any Kafka by bootstrap servers; nothing here knows whether the broker is the local one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from sendflowr.errors import SendflowrError
from sendflowr.settings import Settings


class KafkaUnavailable(SendflowrError):
    pass


class KafkaRefused(KafkaUnavailable):
    """The brokers answered but refused us (wrong credentials, mechanism or CA): a configuration error."""


# librdkafka retries these forever as if they were outages, and reports them only through error_cb; they are
# configuration errors, so every SendFlowr client stops at the first one (a callback's exception propagates out
# of the poll/consume/flush call that served it).
_REFUSALS = frozenset({KafkaError._AUTHENTICATION, KafkaError._SSL, KafkaError.SASL_AUTHENTICATION_FAILED})


def _raise_on_refusal(where: str, error: KafkaError) -> None:
    if error.code() in _REFUSALS:
        raise KafkaRefused(
            f"Kafka at {where} refused the connection: {error.str()}. Check SENDFLOWR_KAFKA_SECURITY_PROTOCOL, "
            "SENDFLOWR_KAFKA_SASL_MECHANISM, SENDFLOWR_KAFKA_SASL_USERNAME, SENDFLOWR_KAFKA_SASL_PASSWORD and "
            "SENDFLOWR_KAFKA_SSL_CA_LOCATION.")


def client_config(settings: Settings) -> dict[str, object]:
    """Where Kafka is and how to authenticate: the one source of connection options for the admin client,
    every producer and the ingestion consumer (local broker, compose, Confluent Cloud, MSK, Aiven alike)."""
    sasl = settings.kafka_security_protocol.startswith("SASL_")
    where = f"{settings.kafka_bootstrap_servers} ({settings.kafka_security_protocol}" + (
        f", {settings.kafka_sasl_mechanism} as {settings.kafka_sasl_username!r})" if sasl else ")")
    config: dict[str, object] = {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "security.protocol": settings.kafka_security_protocol,
        # librdkafka's own log goes to Python logging: an unreachable broker would otherwise print a
        # "Connection refused" line to stderr every 50 ms before our one clear error.
        "logger": logging.getLogger("sendflowr.kafka"),
        "error_cb": partial(_raise_on_refusal, where),
    }
    if sasl:
        config.update({"sasl.mechanism": settings.kafka_sasl_mechanism,
                       "sasl.username": settings.kafka_sasl_username,
                       "sasl.password": settings.kafka_sasl_password.get_secret_value()})
    for key, value in (("ssl.ca.location", settings.kafka_ssl_ca_location),
                       ("ssl.certificate.location", settings.kafka_ssl_certificate_location),
                       ("ssl.key.location", settings.kafka_ssl_key_location)):
        if value:
            config[key] = value
    return config


def admin_client(settings: Settings) -> AdminClient:
    return AdminClient(client_config(settings))


def list_topics(client, topic: str | None = None, timeout: float = 30.0):
    """Cluster metadata from an admin client or an unassigned consumer built on client_config: waits up to
    `timeout` for brokers that do not answer, but raises KafkaRefused as soon as they refuse us (served by poll;
    an unassigned consumer's poll returns no message)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return client.list_topics(topic, timeout=max(0.05, min(1.0, deadline - time.monotonic())))
        except KafkaException:
            client.poll(0)
            if time.monotonic() >= deadline:
                raise


def ensure_topic(settings: Settings, topic: str | None = None, partitions: int | None = None,
                 timeout: float = 30.0) -> bool:
    """Create the topic if it is missing; True when this call created it. Safe to call from many places."""
    name = topic or settings.kafka_topic
    admin = admin_client(settings)
    try:
        existing = list_topics(admin, timeout=timeout).topics
    except KafkaException as exc:
        raise KafkaUnavailable(
            f"Kafka at {settings.kafka_bootstrap_servers} did not answer within {timeout:.0f}s: {exc}"
        ) from exc
    if name in existing:
        return False
    new = NewTopic(name, num_partitions=partitions or settings.kafka_partitions,
                   replication_factor=settings.kafka_replication_factor, config=topic_config(settings))
    future = admin.create_topics([new], operation_timeout=timeout)[name]
    try:
        future.result(timeout=timeout)
    except KafkaException as exc:
        if exc.args and exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
            return False  # another process won the race
        raise
    return True


def topic_config(settings: Settings) -> dict[str, str]:
    """Configs of the events topic when SendFlowr creates it. With acks=all a message is confirmed once
    min.insync.replicas copies have it; with replication factor 1 (one broker) that is the leader alone."""
    return {"min.insync.replicas": str(settings.kafka_min_insync_replicas),
            "retention.ms": str(settings.kafka_retention_hours * 3_600_000)}


def producer_config(settings: Settings, **overrides: object) -> dict[str, object]:
    # Idempotence makes broker-side retries safe: a retried batch is never written twice.
    config: dict[str, object] = {
        **client_config(settings),
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 20,
        "batch.size": 1_000_000,
        "compression.type": "lz4",
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1_048_576,
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
    # Our own producer reports failures only: a Python call per delivered message costs more than producing it
    # (docs/CONNECTORS.md, "Speed"); once flush leaves nothing queued, every message that did not fail arrived.
    producer = producer or Producer(producer_config(settings, **{"delivery.report.only.error": True}))
    report = ProduceReport()
    produced = 0

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
                producer.produce(name, value, key, -1, on_delivery)  # positional: keywords cost ~1 us a call
                break
            except BufferError:
                producer.poll(0.05)  # local queue full: let deliveries drain
        produced += 1
        pending += 1
        if pending >= 10_000:
            producer.poll(0)
            if on_progress:
                on_progress(pending)
            pending = 0
    # Flush in short calls: a refusal raised by error_cb surfaces when the call that served it returns.
    deadline = time.monotonic() + 120
    remaining = producer.flush(1.0)
    while remaining and time.monotonic() < deadline:
        remaining = producer.flush(1.0)
    if on_progress and pending:
        on_progress(pending)
    if remaining or report.failed:
        raise KafkaUnavailable(
            f"{report.failed + remaining} message(s) not confirmed by {settings.kafka_bootstrap_servers}: "
            f"{report.first_error or 'flush timed out'}"
        )
    if own:
        report.sent = produced - report.failed
        del producer
    return report
