"""The Dagster resource the asset tests materialize with: the test's settings (database, topic) and the embedded
endpoint's password, as a deployment would configure it."""

from __future__ import annotations

from sendflowr.clickhouse import password_for
from sendflowr.settings import Settings
from sendflowr_assets.resources import SendflowrResource


def resource_for(settings: Settings) -> SendflowrResource:
    return SendflowrResource(
        clickhouse_url=settings.clickhouse_url, clickhouse_user=settings.clickhouse_user,
        clickhouse_password=password_for(settings), clickhouse_database=settings.clickhouse_database,
        kafka_bootstrap_servers=settings.kafka_bootstrap_servers, kafka_topic=settings.kafka_topic,
        decision_log_topic=settings.decision_log_topic)
