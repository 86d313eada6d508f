"""The Dagster resource: where ClickHouse and Kafka are (the same SENDFLOWR_* environment as the core), and the one
ClickHouse client of a run.

Dagster sets a resource up once per run and process (once per run with the in-process executor, once per step
process with the multiprocess one) and tears it down at the end: the client is made on first use, reused by every
asset and check of that process, tagged with the run (`log_comment`, so `system.query_log` can be filtered by run:
docs/ARCHITECTURE.md), retries transient errors where a retry is safe (sendflowr.clickhouse.SendflowrClient), and
is closed at teardown.
"""

from __future__ import annotations

import os

from clickhouse_connect.driver.client import Client
from dagster import ConfigurableResource, EnvVar, InitResourceContext
from pydantic import PrivateAttr

from sendflowr.clickhouse import Retry, get_client, log_comment
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

    _settings: Settings | None = PrivateAttr(default=None)
    _client: Client | None = PrivateAttr(default=None)
    _comment: str = PrivateAttr(default="")
    _retry: Retry = PrivateAttr(default_factory=Retry)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        run = context.run
        if run is not None:
            self._comment = log_comment(dagster_run_id=run.run_id, dagster_job=run.job_name)
        if context.log is not None:
            self._retry = Retry(log=context.log.warning)

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        self.close()

    def settings(self) -> Settings:
        if self._settings is None:
            extra = {} if self.decision_log_topic is None else {"decision_log_topic": self.decision_log_topic}
            self._settings = Settings(
                clickhouse_url=self.clickhouse_url,
                clickhouse_user=self.clickhouse_user,
                clickhouse_password=self.clickhouse_password,
                clickhouse_database=self.clickhouse_database,
                kafka_bootstrap_servers=self.kafka_bootstrap_servers,
                kafka_topic=self.kafka_topic,
                **extra,
            )
        return self._settings

    def client(self) -> Client:
        """This run's client (made on first use; closed when Dagster tears the resource down)."""
        if self._client is None:
            # Its own connection pool, so that closing it closes its connections (clients share one by default).
            self._client = get_client(self.settings(), comment=self._comment or None, retry=self._retry,
                                      dedicated_pool=True)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


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
