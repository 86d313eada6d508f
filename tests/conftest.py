"""Session services for integration tests: a real Kafka broker and the real ClickHouse engine (chDB
served over HTTP by its own process, exactly as in the embedded stack), on free ports under a temp dir.

Each test that touches data gets its own ClickHouse database and Kafka topic, so tests never share state.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sendflowr.clickhouse import get_client
from sendflowr.kafka_io import ensure_topic
from sendflowr.local import chdb_server, processes
from sendflowr.local.kafka_broker import LocalKafka
from sendflowr.local.processes import free_port
from sendflowr.migrations import apply_migrations
from sendflowr.settings import Settings


@pytest.fixture(scope="session")
def services_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sendflowr-home")


@pytest.fixture(scope="session")
def base_settings(services_home: Path) -> Settings:
    return Settings(
        home=services_home,
        clickhouse_url=f"http://127.0.0.1:{free_port()}",
        kafka_bootstrap_servers=f"127.0.0.1:{free_port()}",
        kafka_controller_port=free_port(),
        kafka_partitions=4,
    )


@pytest.fixture(scope="session")
def kafka(base_settings: Settings) -> Iterator[LocalKafka]:
    broker = LocalKafka(base_settings)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def clickhouse(base_settings: Settings) -> Iterator[Settings]:
    """The chDB endpoint in its own process, as every non-owner process reaches it."""
    chdb_server.start_background(base_settings)
    yield base_settings
    processes.stop(base_settings, chdb_server.PROCESS_NAME)


@pytest.fixture
def settings(base_settings: Settings, kafka: LocalKafka, clickhouse: Settings) -> Settings:
    """Fresh database and topic for one test, schema migrated, topic created."""
    suffix = uuid.uuid4().hex[:10]
    fresh = base_settings.model_copy(update={"clickhouse_database": f"t_{suffix}",
                                             "kafka_topic": f"events-{suffix}"})
    apply_migrations(fresh)
    ensure_topic(fresh)
    return fresh


@pytest.fixture
def ch(settings: Settings):
    client = get_client(settings)
    yield client
    client.close()
