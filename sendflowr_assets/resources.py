"""Dagster resources: ClickHouse and Kafka, configured from the same SENDFLOWR_* environment as the core."""

from __future__ import annotations

import os

from clickhouse_connect.driver.client import Client
from dagster import ConfigurableResource, EnvVar

from sendflowr.clickhouse import get_client
from sendflowr.settings import Settings, get_settings


class SendflowrResource(ConfigurableResource):
    """Where ClickHouse and Kafka are. Defaults come from SENDFLOWR_* variables (see README)."""

    clickhouse_url: str
    clickhouse_user: str
    clickhouse_password: str
    clickhouse_database: str
    kafka_bootstrap_servers: str
    kafka_topic: str
    decision_log_topic: str | None = None  # None: SENDFLOWR_DECISION_LOG_TOPIC

    def settings(self) -> Settings:
        extra = {} if self.decision_log_topic is None else {"decision_log_topic": self.decision_log_topic}
        return Settings(
            clickhouse_url=self.clickhouse_url,
            clickhouse_user=self.clickhouse_user,
            clickhouse_password=self.clickhouse_password,
            clickhouse_database=self.clickhouse_database,
            kafka_bootstrap_servers=self.kafka_bootstrap_servers,
            kafka_topic=self.kafka_topic,
            **extra,
        )

    def client(self) -> Client:
        return get_client(self.settings())


def default_resource(settings: Settings | None = None) -> SendflowrResource:
    settings = settings or get_settings()
    # The password is an EnvVar so the UI shows its name, never its value.
    password = EnvVar("SENDFLOWR_CLICKHOUSE_PASSWORD") if os.environ.get("SENDFLOWR_CLICKHOUSE_PASSWORD") else ""
    return SendflowrResource(
        clickhouse_url=settings.clickhouse_url,
        clickhouse_user=settings.clickhouse_user,
        clickhouse_password=password,
        clickhouse_database=settings.clickhouse_database,
        kafka_bootstrap_servers=settings.kafka_bootstrap_servers,
        kafka_topic=settings.kafka_topic,
        decision_log_topic=settings.decision_log_topic,
    )
