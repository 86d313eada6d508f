"""The local Kafka broker against the real thing: jars from Maven Central, a real KRaft JVM, real clients.

Every broker here runs from its own tmp state dir on free ports, so a broker on the default ports (or the
session broker of other tests) is never touched.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from sendflowr.errors import SendflowrError
from sendflowr.kafka_io import admin_client, ensure_topic, produce_all
from sendflowr.local.kafka_broker import LocalKafka
from sendflowr.local.processes import free_port
from sendflowr.settings import Settings

pytestmark = pytest.mark.integration

PARTITIONS = 3


def _free_ports(count: int) -> list[int]:
    return [free_port() for _ in range(count)]


def test_free_ports_lie_below_the_ephemeral_range_and_never_repeat() -> None:
    """A service restarted on its port (test_data_survives_stop_and_start) must not find it taken by some outgoing
    connection's source port, which the kernel draws from the ephemeral range."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [free_port() for _ in range(200)]
    assert all(1024 <= p < low for p in ports) and len(set(ports)) == len(ports)


def _settings(home: Path, broker_port: int | None = None, controller_port: int | None = None) -> Settings:
    free = _free_ports(2)
    return Settings(
        home=home,
        kafka_bootstrap_servers=f"127.0.0.1:{broker_port or free[0]}",
        kafka_controller_port=controller_port or free[1],
        kafka_topic=f"test.events.{uuid.uuid4().hex[:8]}",
        kafka_partitions=PARTITIONS,
        kafka_replication_factor=1,
    )


def _messages(n: int, tag: str) -> list[tuple[bytes, bytes]]:
    return [(f"user-{i % 17}".encode(), f"{tag}-{i}".encode()) for i in range(n)]


def _consume_all(settings: Settings, topic: str, expected: int,
                 timeout: float = 30) -> list[tuple[bytes, bytes]]:
    """Every message of the topic from the beginning; stops once `expected` arrived and nothing more comes."""
    consumer = Consumer({
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "group.id": f"test-{uuid.uuid4().hex}",
        "enable.auto.commit": False,
    })
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        got: list[tuple[bytes, bytes]] = []
        deadline = time.monotonic() + timeout
        while len(got) < expected and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=1000, timeout=1):
                assert msg.error() is None, msg.error()
                got.append((msg.key(), msg.value()))
        for msg in consumer.consume(num_messages=1000, timeout=1):  # anything beyond `expected`?
            got.append((msg.key(), msg.value()))
        marks = [consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10) for p in partitions]
        stored = sum(high - low for low, high in marks)
        assert stored == len(got)
        return got
    finally:
        consumer.close()


def _partition_count(settings: Settings, topic: str) -> int:
    return len(admin_client(settings).list_topics(topic, timeout=10).topics[topic].partitions)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    kafka = LocalKafka(_settings(tmp_path_factory.mktemp("kafka-home")))
    kafka.start()
    try:
        yield kafka
    finally:
        kafka.stop()


def test_running_broker_reports_itself_and_start_is_idempotent(broker: LocalKafka) -> None:
    assert broker.is_running()
    pid = int(broker.pid_file.read_text())
    assert broker.status().startswith(f"running (pid {pid}, ready)")
    begun = time.monotonic()
    broker.start()  # already running: returns without a second JVM
    assert time.monotonic() - begun < 5
    assert int(broker.pid_file.read_text()) == pid
    # A second handle on the same state dir sees the same process...
    assert LocalKafka(broker.settings).is_running()
    # ...and refuses to pretend a broker on other ports is the one the settings ask for.
    moved = LocalKafka(_settings(broker.settings.home, broker_port=broker.broker_port))
    with pytest.raises(SendflowrError, match="differs from the current settings"):
        moved.start()
    assert broker.is_running()


def test_stopped_broker_reports_stopped(tmp_path: Path) -> None:
    kafka = LocalKafka(_settings(tmp_path / "home"))
    assert not kafka.is_running()
    assert kafka.status().startswith("stopped")
    kafka.stop()  # no-op
    assert not kafka.pid_file.exists()


def test_ensure_topic_creates_configured_partitions_once(broker: LocalKafka) -> None:
    settings = broker.settings
    assert ensure_topic(settings) is True
    assert _partition_count(settings, settings.kafka_topic) == PARTITIONS
    assert ensure_topic(settings) is False
    assert _partition_count(settings, settings.kafka_topic) == PARTITIONS


def test_produced_messages_come_back_exactly_once(broker: LocalKafka) -> None:
    settings = broker.settings
    topic = f"roundtrip.{uuid.uuid4().hex[:8]}"
    assert ensure_topic(settings, topic=topic)
    sent = _messages(2_000, "roundtrip")
    report = produce_all(settings, sent, topic=topic)
    assert (report.sent, report.failed) == (len(sent), 0)
    got = _consume_all(settings, topic, expected=len(sent))
    assert len(got) == len(sent)
    assert sorted(got) == sorted(sent)


def _refused_on_a_taken_port(home: Path, which: str, setting: str) -> LocalKafka:
    """A broker whose `which` port (broker_port / controller_port) another socket holds: start names the port and
    the setting, and leaves nothing running."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        kafka = LocalKafka(_settings(home, **{which: port}))
        with pytest.raises(SendflowrError, match=rf"port {port} .*{setting}"):
            kafka.start()
    assert not kafka.is_running()
    return kafka


def test_busy_broker_port_is_named(broker: LocalKafka, tmp_path: Path) -> None:
    kafka = _refused_on_a_taken_port(tmp_path / "a", "broker_port", "SENDFLOWR_KAFKA_BOOTSTRAP_SERVERS")
    assert not kafka.pid_file.exists()

    # The port of a running broker of another state dir: named, and the owner recognised as a broker.
    other = LocalKafka(_settings(tmp_path / "b", broker_port=broker.broker_port))
    with pytest.raises(SendflowrError, match=rf"port {broker.broker_port} .*a Kafka broker"):
        other.start()


def test_busy_controller_port_is_named(tmp_path: Path) -> None:
    _refused_on_a_taken_port(tmp_path / "home", "controller_port", "SENDFLOWR_KAFKA_CONTROLLER_PORT")


def test_broker_that_dies_at_startup_shows_its_log(tmp_path: Path) -> None:
    kafka = LocalKafka(_settings(tmp_path / "home"))
    kafka.data_dir.mkdir(parents=True)
    # Looks formatted (so no format step) but names another node: the broker refuses to start.
    (kafka.data_dir / "meta.properties").write_text(
        "version=1\nnode.id=7\ncluster.id=hEE9JGfB4LpP6-o5pMw1Tg\ndirectory.id=36WfHCrtHSpXvxG8ATlCqQ\n"
    )
    with pytest.raises(SendflowrError, match=r"exited .*before it was ready") as excinfo:
        kafka.start(timeout=60)
    message = str(excinfo.value)
    assert "kafka.log" in message
    assert "node id 7" in message  # the broker's own complaint, from the tail of its log
    assert len(message.splitlines()) > 3
    assert not kafka.is_running()
    assert not kafka.pid_file.exists()


def test_data_survives_stop_and_start(tmp_path: Path) -> None:
    settings = _settings(tmp_path / "home")
    kafka = LocalKafka(settings)
    sent = _messages(300, "persist")
    try:
        kafka.start()
        assert ensure_topic(settings) is True
        produce_all(settings, sent)
        kafka.stop()
        assert not kafka.is_running()
        assert not kafka.pid_file.exists()
        assert kafka.status().startswith("stopped")

        kafka.start()
        assert kafka.is_running()
        assert ensure_topic(settings) is False  # the topic is still there...
        got = _consume_all(settings, settings.kafka_topic, expected=len(sent))
        assert sorted(got) == sorted(sent)  # ...and so is its data
    finally:
        kafka.stop()
    assert not kafka.is_running()
