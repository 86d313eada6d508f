"""One settings object for every SendFlowr process, read from SENDFLOWR_* environment variables.

Defaults describe the embedded stack on one machine (local Kafka broker, chDB behind a local
ClickHouse HTTP endpoint). Pointing the URLs at real servers needs no code change.
"""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parents[1]
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


def reveal(value: SecretStr | str | None) -> str:
    """A secret's text (secrets are SecretStr so that repr, logs and tracebacks show `**********`)."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    return value or ""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SENDFLOWR_", extra="ignore", frozen=True)

    home: Path = Field(
        default=PROJECT_ROOT / ".sendflowr",
        description="State directory of the embedded stack: chDB data, Kafka logs and jars, pid files, "
        "Dagster home, generated worlds.",
    )

    clickhouse_url: str = Field(
        default="http://127.0.0.1:8123",
        description="ClickHouse HTTP endpoint. The embedded default serves chDB here; any ClickHouse server "
        "works by URL.",
    )
    clickhouse_user: str = Field(default="default", description="ClickHouse user.")
    clickhouse_password: SecretStr = Field(
        default=SecretStr(""), description="ClickHouse password (never stored in code). Empty with the embedded "
        "endpoint: the per-install password it generated under <home>/secrets is used.")
    clickhouse_database: str = Field(
        default="sendflowr", description="Database holding every SendFlowr table (a plain SQL identifier).")
    clickhouse_ca_cert: str = Field(
        default="", description="PEM file of the CA that signed the ClickHouse server's certificate (https URLs); "
        "empty trusts the system's CAs (enough for ClickHouse Cloud).")
    clickhouse_cluster: str = Field(
        default="", pattern=r"^([A-Za-z_][A-Za-z0-9_]*)?$",
        description="Cluster (remote_servers) the migrations create every table on: Replicated engines, ON CLUSTER "
        "DDL, leases in KeeperMap (docs/SCALING.md, 'Cluster mode'); empty for one server.")
    chdb_path: Path | None = Field(
        default=None,
        description="Data directory of the embedded chDB engine (default: <home>/chdb).",
    )
    events_ttl_days: int = Field(
        default=0,
        ge=0,
        description="Drop events older than this many days (ClickHouse TTL on occurred_at), and their ids with them; "
                    "0 keeps them forever.",
    )

    kafka_bootstrap_servers: str = Field(default="127.0.0.1:9092", description="Kafka bootstrap servers.")
    kafka_topic: str = Field(default="sendflowr.events", description="Topic carrying engagement events.")
    decision_log_topic: str = Field(
        default="sendflowr.decisions",
        description="Topic carrying the decision log (every decision the API serves); empty turns the log off.")
    kafka_partitions: int = Field(default=4, ge=1, description="Partitions of the events topic when created.")
    kafka_replication_factor: int = Field(default=1, ge=1, description="Replication factor when created.")
    kafka_min_insync_replicas: int = Field(
        default=1, ge=1, description="Topic's min.insync.replicas when created: replicas that must have a message "
        "before acks=all confirms it (at most the replication factor).")
    kafka_retention_hours: int = Field(
        default=168, ge=1, description="Topic's retention.ms when created, in hours; must outlast the longest "
        "ingestion outage you want to recover from.")
    kafka_consumer_group: str = Field(
        default="sendflowr-ingest", min_length=1,
        description="Consumer group the ingestion mirrors its committed offsets into (lag in standard tools).")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT", description="librdkafka security.protocol for every Kafka client (SASL_SSL for "
        "Confluent Cloud, MSK with SASL/SCRAM, Aiven with SASL).")
    kafka_sasl_mechanism: Literal["", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        default="", description="librdkafka sasl.mechanism (SASL protocols only).")
    kafka_sasl_username: str = Field(
        default="", description="librdkafka sasl.username (an API key on Confluent Cloud).")
    kafka_sasl_password: SecretStr = Field(
        default=SecretStr(""), description="Secret: librdkafka sasl.password (never stored in code, never logged).")
    kafka_ssl_ca_location: str = Field(
        default="", description="librdkafka ssl.ca.location: PEM file of the CA of the brokers' certificates; "
        "empty trusts the system's CAs.")
    kafka_ssl_certificate_location: str = Field(
        default="", description="librdkafka ssl.certificate.location: client certificate (PEM) for mutual TLS.")
    kafka_ssl_key_location: str = Field(
        default="", description="librdkafka ssl.key.location: private key (PEM) of the client certificate.")
    kafka_version: str = Field(
        default="4.1.1",
        description="Apache Kafka release (org.apache.kafka:kafka_2.13) fetched from Maven Central for "
        "the local broker.",
    )
    kafka_controller_port: int = Field(default=9093, description="KRaft controller port of the local broker.")
    kafka_jars_cache: Path = Field(
        default=Path.home() / ".cache" / "sendflowr" / "kafka",
        description="Where Maven copies the broker's jars (one folder per version), shared by every state dir.",
    )

    ingest_poll_seconds: int = Field(
        default=30, ge=5, description="How often the ingestion sensor compares Kafka's high watermarks with the "
        "ingested offsets; a run is launched only when there is something new.")
    timing_cron: str = Field(default="0 3 * * *", description="When the timing curves are rebuilt, once identity "
                             "has changed since (cron, UTC).")
    uplift_cron: str = Field(default="15 * * * *", description="When timing_uplift is measured, once decisions or "
                             "identity have changed since (cron, UTC).")
    uplift_horizon_hours: int = Field(
        default=72, ge=1, le=720,
        description="A decision counts as engaged when its delivery is genuinely engaged with within this many "
        "hours; younger deliveries are not scored yet.")
    timing_prior_strength: float = Field(
        default=0.5, gt=0,
        description="Pseudo-engagements of the cohort prior per hour in a person's curve (shrinkage strength).")
    ingest_max_messages_per_partition: int = Field(
        default=1_000_000, ge=1, description="Most offsets one ingestion run reads per partition.")
    ingest_writers: int = Field(
        default=1, ge=1, description="Ingestion writers that run at once, each over its own partitions (p % writers "
        "== slot); the ingestion sensor launches one run per slot (docs/INGESTION.md, 'Several writers').")
    ingest_max_rejected_share: float = Field(
        default=0.05, ge=0, le=1,
        description="The ingestion asset check fails when a run rejects a larger share of its messages.")

    api_host: str = Field(default="127.0.0.1", description="Address the decision API binds.")
    api_port: int = Field(default=8000, description="Port of the decision API.")
    api_key: SecretStr = Field(
        default=SecretStr(""), description="When set, the decision and lookup endpoints require it in the X-API-Key "
        "header. Required for a non-loopback SENDFLOWR_API_HOST and for person lookups (/people).")
    api_allow_unauthenticated: bool = Field(
        default=False, description="Opt-out: let the API start on a non-loopback address without SENDFLOWR_API_KEY "
        "(only behind something else that authenticates).")
    api_max_body_bytes: int = Field(
        default=16 * 1024 * 1024, ge=1024, description="Largest API request body accepted (413 above, before parsing).")
    api_snapshot_refresh_seconds: float = Field(
        default=5.0, gt=0, description="How often the API polls ClickHouse for a newer materialization to load.")
    api_snapshot_dir: Path | None = Field(
        default=None, description="Where the API workers of a host share the decision snapshot as memory-mapped "
        "column files, written once per version (default: <home>/api-snapshots); a local disk all of them see.")
    api_batch_max_size: int = Field(
        default=10_000, ge=1, description="Most recipients one POST /timing-decisions request may carry.")
    api_normalize_cache_size: int = Field(
        default=100_000, ge=1, description="Identifiers unknown to the snapshot whose normalization the API caches.")
    api_control_share: float = Field(
        default=0.0, ge=0, le=1,
        description="Share of decisions in the randomized control arm (a uniformly random moment in the window), "
        "assigned by a hash of universal_id and campaign_id; 0 turns the control arm off.")
    api_exploration: float = Field(
        default=0.0, ge=0, le=2,
        description="Exploration of treatment decisions by Thompson sampling from the timing model's uncertainty "
        "(docs/EVALUATION.md, Exploration): 1 draws at the posterior's width, less explores less; 0 turns it off "
        "(every treatment decision takes the curve's best moment).")
    api_clock_offset_seconds: float = Field(
        default=0.0, ge=0,
        description="Simulation only: the API decides as if the time were this many seconds earlier "
        "(`sendflowr campaign` replays campaigns in the past); keep 0.")
    decision_log_queue_size: int = Field(
        default=100_000, ge=1,
        description="Most decisions the API holds for Kafka; beyond that, decisions are answered but their log "
        "records are dropped and counted in /metrics.")
    dagster_port: int = Field(default=3000, description="Port of the Dagster UI (dagster dev).")

    webhooks_host: str = Field(default="127.0.0.1", description="Address the ESP webhook receiver binds.")
    webhooks_port: int = Field(default=8001, description="Port of the ESP webhook receiver (sendflowr_webhooks).")
    webhooks_max_body_bytes: int = Field(
        default=10 * 1024 * 1024, ge=1024, description="Largest webhook request body accepted (413 above).")
    webhooks_signature_max_age_seconds: int = Field(
        default=900, ge=0,
        description="Signed webhooks (SendGrid, Mailgun, Klaviyo) older or newer than this are rejected as "
        "replays; 0 disables the age check.")
    sendgrid_verification_key: str = Field(
        default="", description="SendGrid Signed Event Webhook public key (base64); when set, unsigned or "
        "badly signed SendGrid posts are rejected.")
    mailgun_signing_key: SecretStr = Field(
        default=SecretStr(""), description="Secret: Mailgun HTTP webhook signing key; when set, every Mailgun post "
        "must carry a valid, fresh, unused signature.")
    klaviyo_webhook_secret: SecretStr = Field(
        default=SecretStr(""),
        description="Secret: Klaviyo system webhook secret; when set, Klaviyo-Signature is checked.")
    sns_verify_signatures: bool = Field(
        default=True, description="Check SNS message signatures on /webhooks/ses (certificate fetched from "
        "sns.<region>.amazonaws.com only).")
    sns_topic_arns: str = Field(
        default="", description="Comma-separated SNS topic ARNs accepted on /webhooks/ses; empty refuses every SNS "
        "message (nothing is confirmed), `*` accepts any topic whose signature verifies.")
    webhooks_events_token: SecretStr = Field(
        default=SecretStr(""),
        description="Secret: bearer token required on /webhooks/events (our own contract) when set.")
    webhooks_routes: str = Field(
        default="sendgrid,mailgun,ses,klaviyo,events",
        description="Comma-separated webhook routes served; the others answer 404.")
    webhooks_allow_unauthenticated: bool = Field(
        default=False, description="Opt-out: let the receiver start on a non-loopback address with served routes "
        "that have no key (only behind something else that authenticates).")
    webhooks_max_records: int = Field(
        default=10_000, ge=1, description="Most records one webhook request may carry (413 above).")
    webhooks_produce_timeout_seconds: float = Field(
        default=10.0, gt=0, description="How long a webhook request waits for Kafka to confirm its events "
        "before answering 503 (the provider then retries).")

    @field_validator("clickhouse_url")
    @classmethod
    def _url_has_scheme(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"SENDFLOWR_CLICKHOUSE_URL must look like http://host:port, got {value!r}")
        return value.rstrip("/")

    @field_validator("clickhouse_database")
    @classmethod
    def _database_is_identifier(cls, value: str) -> str:
        # The name is written into SQL text (sql/ files, DDL): only a plain identifier is safe there.
        if not _IDENTIFIER.match(value):
            raise ValueError(f"SENDFLOWR_CLICKHOUSE_DATABASE must be a plain identifier ([A-Za-z_][A-Za-z0-9_]*, "
                             f"at most 64 characters), got {value!r}")
        return value

    @model_validator(mode="after")
    def _kafka_security_is_complete(self) -> Settings:
        sasl = self.kafka_security_protocol.startswith("SASL_")
        if sasl and not (self.kafka_sasl_mechanism and self.kafka_sasl_username):
            raise ValueError(f"SENDFLOWR_KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs "
                             "SENDFLOWR_KAFKA_SASL_MECHANISM and SENDFLOWR_KAFKA_SASL_USERNAME (and the password)")
        if not sasl and self.kafka_sasl_mechanism:
            raise ValueError("SENDFLOWR_KAFKA_SASL_MECHANISM is set but SENDFLOWR_KAFKA_SECURITY_PROTOCOL="
                             f"{self.kafka_security_protocol} does not use SASL")
        if self.kafka_min_insync_replicas > self.kafka_replication_factor:
            # acks=all could then never be satisfied: every produce would fail with NOT_ENOUGH_REPLICAS
            raise ValueError(f"SENDFLOWR_KAFKA_MIN_INSYNC_REPLICAS={self.kafka_min_insync_replicas} exceeds "
                             f"SENDFLOWR_KAFKA_REPLICATION_FACTOR={self.kafka_replication_factor}")
        return self

    @model_validator(mode="after")
    def _decision_log_has_its_own_topic(self) -> Settings:
        if self.decision_log_topic and self.decision_log_topic == self.kafka_topic:
            raise ValueError("SENDFLOWR_DECISION_LOG_TOPIC must differ from SENDFLOWR_KAFKA_TOPIC")
        return self

    @cached_property
    def chdb_data_dir(self) -> Path:
        return (self.chdb_path or self.home / "chdb").resolve()

    @cached_property
    def api_snapshot_path(self) -> Path:
        return (self.api_snapshot_dir or self.home / "api-snapshots").resolve()

    @property
    def clickhouse_host(self) -> str:
        return urlsplit(self.clickhouse_url).hostname or "127.0.0.1"

    @property
    def clickhouse_port(self) -> int:
        parts = urlsplit(self.clickhouse_url)
        return parts.port or (8443 if parts.scheme == "https" else 8123)

    def as_env(self) -> dict[str, str]:
        """These settings as SENDFLOWR_* variables, so a child process sees exactly the same ones."""
        env = {}
        for name in type(self).model_fields:
            value: Any = getattr(self, name)
            if value is not None:
                env[f"SENDFLOWR_{name.upper()}"] = reveal(value) if isinstance(value, SecretStr) else str(value)
        return env

    @property
    def kafka_home(self) -> Path:
        return self.home / "kafka"

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster"


def get_settings() -> Settings:
    return Settings()
