"""Managed Kafka, for real: the local Apache Kafka broker with a SASL_SSL listener (SCRAM-SHA-512, a CA and a
server certificate made in the test, PEM keystore), reached only through the SENDFLOWR_KAFKA_* security
settings. A webhook produces through it, ingestion consumes through it into ClickHouse, the topic gets the
configured settings, and wrong credentials or a wrong CA fail at once with a message naming the settings."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    ConfigResource,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)
from fastapi.testclient import TestClient
from test_connectors_support import FIXTURES
from tls_material import ServerTls, make_server_tls

from sendflowr.ingest import IngestOptions, ingest_once
from sendflowr.kafka_io import KafkaRefused, admin_client, client_config, ensure_topic, produce_all
from sendflowr.local.kafka_broker import LocalKafka
from sendflowr.local.processes import free_port
from sendflowr.settings import Settings
from sendflowr_webhooks.app import create_app

pytestmark = pytest.mark.integration

USER, PASSWORD, TOKEN = "sendflowr-app", "s3cret-Scram-pw", "hook-t0ken"


class SaslBroker:
    def __init__(self, broker: LocalKafka, sasl_port: int, tls: ServerTls):
        self.broker, self.sasl_port, self.tls = broker, sasl_port, tls

    def settings(self, base: Settings, **update: object) -> Settings:
        """`base` (its ClickHouse database) reaching this broker's SASL_SSL listener as a managed Kafka client."""
        suffix = uuid.uuid4().hex[:8]
        values = {**base.model_dump(), "kafka_bootstrap_servers": f"127.0.0.1:{self.sasl_port}",
                  "kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "SCRAM-SHA-512",
                  "kafka_sasl_username": USER, "kafka_sasl_password": PASSWORD,
                  "kafka_ssl_ca_location": str(self.tls.ca), "kafka_topic": f"sasl-{suffix}",
                  "kafka_consumer_group": f"managed-ingest-{suffix}", "kafka_retention_hours": 36,
                  "webhooks_events_token": TOKEN, "webhooks_produce_timeout_seconds": 60, **update}
        return Settings(**values)  # validated like the environment would be (the password becomes a SecretStr)


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SaslBroker]:
    home = tmp_path_factory.mktemp("kafka-sasl")
    tls = make_server_tls(home / "tls")
    sasl_port = free_port()
    plain = Settings(home=home, kafka_bootstrap_servers=f"127.0.0.1:{free_port()}", kafka_controller_port=free_port())
    broker = LocalKafka(plain, extra_listeners={"SASL_SSL": sasl_port}, extra_properties={
        "sasl.enabled.mechanisms": "SCRAM-SHA-512",
        "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config":
            "org.apache.kafka.common.security.scram.ScramLoginModule required;",
        "listener.name.sasl_ssl.ssl.keystore.type": "PEM",
        "listener.name.sasl_ssl.ssl.keystore.location": tls.keystore,
    })
    broker.start()
    try:
        # The SCRAM user, created over the broker's own PLAINTEXT listener (an operator's step on a managed Kafka).
        admin = AdminClient({"bootstrap.servers": plain.kafka_bootstrap_servers})
        upsert = UserScramCredentialUpsertion(USER, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192),
                                              PASSWORD.encode())
        for future in admin.alter_user_scram_credentials([upsert]).values():
            future.result(30)
        ready = SaslBroker(broker, sasl_port, tls)
        probe = ready.settings(plain)
        deadline = time.monotonic() + 30
        while True:  # the credential reaches the SASL listener through the metadata log, a moment later
            try:
                admin_client(probe).list_topics(timeout=5)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        yield ready
    finally:
        broker.stop()


def test_webhook_to_clickhouse_through_sasl_ssl(settings, ch, sasl_broker):
    managed = sasl_broker.settings(settings)
    assert ensure_topic(managed) is True  # the admin client authenticates with the same settings

    # Topic configs come from the settings.
    admin = admin_client(managed)
    resource = ConfigResource(ResourceType.TOPIC, managed.kafka_topic)
    configs = admin.describe_configs([resource])[resource].result(30)
    assert configs["retention.ms"].value == str(36 * 3_600_000)
    assert configs["min.insync.replicas"].value == "1"

    native = [json.loads(line) for line in (FIXTURES / "native_events.jsonl").read_text().splitlines()]
    with TestClient(create_app(managed)) as client:
        response = client.post("/webhooks/events", json=native, headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200, response.text

    report = ingest_once(managed, ch, IngestOptions(until_caught_up=True), log=lambda _line: None)
    assert report.messages == len(native) and report.inserted == len(native)
    landed = {r[0] for r in ch.query(f"SELECT event_id FROM {managed.clickhouse_database}.events").result_rows}
    assert landed == {e["event_id"] for e in native}

    # Progress is mirrored into the consumer group named by the settings, read back over SASL_SSL.
    probe = Consumer({**client_config(managed), "group.id": managed.kafka_consumer_group})
    try:
        parts = [TopicPartition(managed.kafka_topic, p) for p in range(managed.kafka_partitions)]
        committed = sum(tp.offset for tp in probe.committed(parts, timeout=30) if tp.offset >= 0)
    finally:
        probe.close()
    assert committed == len(native)


def test_the_password_is_a_secret(settings, sasl_broker):
    managed = sasl_broker.settings(settings)
    assert PASSWORD not in repr(managed) and PASSWORD not in str(managed.model_dump())
    assert managed.as_env()["SENDFLOWR_KAFKA_SASL_PASSWORD"] == PASSWORD  # child processes get the real value


@pytest.mark.parametrize("wrong", ["password", "ca"])
def test_wrong_credentials_or_ca_fail_at_once_with_a_clear_message(settings, ch, sasl_broker, tmp_path: Path, wrong):
    good = sasl_broker.settings(settings)
    ensure_topic(good)
    update = ({"kafka_sasl_password": "not-the-password"} if wrong == "password"
              else {"kafka_ssl_ca_location": str(make_server_tls(tmp_path / "other").ca)})
    bad = Settings(**{**good.model_dump(), **update})
    expected = "SASL authentication" if wrong == "password" else "certificate verify failed"

    # Each waits far longer than the broker takes to answer; a refusal must end it, not the timeout.
    with pytest.raises(KafkaRefused, match=expected) as refused:
        ensure_topic(bad, timeout=300)
    message = str(refused.value)
    assert "SENDFLOWR_KAFKA_SASL_PASSWORD" in message and "SENDFLOWR_KAFKA_SSL_CA_LOCATION" in message
    assert "not-the-password" not in message

    with pytest.raises(KafkaRefused, match=expected):
        ingest_once(bad, ch, log=lambda _line: None)  # the consumer
    with pytest.raises(KafkaRefused, match=expected):
        produce_all(bad, [(None, b"{}")])  # `sendflowr import` / `generate`'s producer
    assert ch.command(f"SELECT count() FROM {good.clickhouse_database}.ingest_ranges") == 0
