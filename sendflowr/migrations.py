"""Ordered, idempotent ClickHouse migrations from sql/migrations/NNNN_name.sql.

Each file holds statements ending with `;` at the end of a line and may use ${database}. Applied
versions are recorded in <database>.schema_migrations with a checksum, so re-running is a no-op and an
edited, already-applied file is reported instead of silently diverging. The TTL of events and of their ids
follows SENDFLOWR_EVENTS_TTL_DAYS on every run. With SENDFLOWR_CLICKHOUSE_CLUSTER set, every statement is rendered for
the cluster first (sendflowr/cluster.py); the files and their checksums are the same in both modes.
"""

from __future__ import annotations

import argparse
import hashlib
import re
from dataclasses import dataclass
from importlib.resources.abc import Traversable

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError as DriverError

from sendflowr import cluster
from sendflowr.clickhouse import get_client, wait_for_clickhouse
from sendflowr.errors import SendflowrError
from sendflowr.settings import Settings
from sendflowr.sql_files import render, sql_path

MIGRATIONS_DIR = sql_path("migrations")
_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_STATEMENT_END = re.compile(r";[ \t]*(?:--[^\n]*)?$", re.MULTILINE)


class MigrationError(SendflowrError):
    pass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Traversable
    text: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()[:16]

    def statements(self, database: str, on_cluster: str = "") -> list[str]:
        """The file's statements for `database`, rendered for the cluster `on_cluster` when one is named."""
        rendered = render(self.text, database)
        parts = [part.strip() for part in _STATEMENT_END.split(rendered) if _strip_comments(part).strip()]
        return [cluster.render(part, database, on_cluster) for part in parts] if on_cluster else parts


def _strip_comments(sql: str) -> str:
    return "\n".join(line for line in sql.splitlines() if not line.strip().startswith("--"))


def discover(directory: Traversable = MIGRATIONS_DIR) -> list[Migration]:
    found: list[Migration] = []
    for path in sorted((p for p in directory.iterdir() if p.name.endswith(".sql")), key=lambda p: p.name):
        match = _FILE_NAME.match(path.name)
        if not match:
            raise MigrationError(f"migration file {path.name} must be named NNNN_lower_snake.sql")
        found.append(Migration(int(match.group(1)), match.group(2), path, path.read_text(encoding="utf-8")))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migrations share a version number in {directory}")
    return found


def _command(client: Client, statement: str, settings: Settings) -> None:
    on_cluster = settings.clickhouse_cluster
    client.command(cluster.render(statement, settings.clickhouse_database, on_cluster) if on_cluster else statement)


def _applied(client: Client, settings: Settings) -> dict[int, str]:
    database = settings.clickhouse_database
    _command(client,
             f"CREATE TABLE IF NOT EXISTS {database}.schema_migrations "
             "(version UInt32, name String, checksum String, applied_at DateTime64(3, 'UTC') DEFAULT now64(3)) "
             "ENGINE = MergeTree ORDER BY version", settings)
    rows = client.query(f"SELECT version, any(checksum) FROM {database}.schema_migrations GROUP BY version")
    return {int(version): checksum for version, checksum in rows.result_rows}


def apply_migrations(settings: Settings, directory: Traversable = MIGRATIONS_DIR, wait: float = 30.0) -> list[str]:
    """Apply what is missing, in order; return the names applied. Safe to run at every start-up."""
    database = settings.clickhouse_database
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", database):
        raise MigrationError(f"SENDFLOWR_CLICKHOUSE_DATABASE={database!r} is not a plain identifier")
    try:
        _command(wait_for_clickhouse(settings, timeout=wait), f"CREATE DATABASE IF NOT EXISTS {database}", settings)
    except DriverError as exc:
        if not settings.clickhouse_cluster:
            raise
        raise MigrationError(
            f"SENDFLOWR_CLICKHOUSE_CLUSTER={settings.clickhouse_cluster}: {settings.clickhouse_url} refused ON CLUSTER "
            f"DDL ({str(exc).strip().splitlines()[-1][:300]}). Cluster mode needs ClickHouse servers that list this "
            "cluster in remote_servers and share a Keeper; the embedded chDB engine runs no distributed DDL "
            "(docs/SCALING.md, 'Cluster mode').") from exc
    client = get_client(settings)
    applied = _applied(client, settings)
    done: list[str] = []
    for migration in discover(directory):
        label = migration.path.name
        if migration.version in applied:
            if applied[migration.version] != migration.checksum:
                raise MigrationError(
                    f"migration {label} was changed after it was applied (checksum "
                    f"{applied[migration.version]} -> {migration.checksum}); add a new migration instead"
                )
            continue
        for number, statement in enumerate(migration.statements(database, settings.clickhouse_cluster), start=1):
            try:
                client.command(statement)
            except DriverError as exc:
                raise MigrationError(
                    f"migration {label} failed at statement {number}: {str(exc).strip().splitlines()[-1][:500]}"
                ) from exc
        client.insert(f"{database}.schema_migrations", [[migration.version, migration.name, migration.checksum]],
                      column_names=["version", "name", "checksum"])
        done.append(label)
    _apply_events_ttl(client, settings)
    return done


# Each table's TTL under SENDFLOWR_EVENTS_TTL_DAYS: an event's id is kept while its event is (an hour longer, since
# occurred_hour rounds down), so the duplicate check holds no ids of events that are gone (migration 0019).
_TTL = {"events": "toDateTime(occurred_at) + toIntervalDay({days})",
        "event_ids": "(occurred_hour + toIntervalDay({days})) + toIntervalHour(1)"}


def _apply_events_ttl(client: Client, settings: Settings) -> None:
    for name, ttl in _TTL.items():
        table = f"{settings.clickhouse_database}.{name}"
        current = client.command(
            "SELECT extract(create_table_query, 'TTL ([^\\n]+?)(?: SETTINGS|$)') FROM system.tables "
            "WHERE database = {db:String} AND name = {name:String}",
            parameters={"db": settings.clickhouse_database, "name": name})
        if settings.events_ttl_days > 0:
            wanted = ttl.format(days=settings.events_ttl_days)
            if wanted not in str(current):
                _command(client, f"ALTER TABLE {table} MODIFY TTL {wanted}", settings)
        elif current:
            _command(client, f"ALTER TABLE {table} REMOVE TTL", settings)


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("migrate", help="apply the ClickHouse migrations in sql/migrations")
    parser.add_argument("--with-topic", action="store_true",
                        help="also create the Kafka events and decision-log topics if they are missing (the compose "
                             "`migrate` service)")
    parser.set_defaults(handler=_cli_migrate)


def _cli_migrate(args, settings: Settings) -> int:
    done = apply_migrations(settings)
    print(f"applied {len(done)} migration(s)" + (f": {', '.join(done)}" if done else " (schema up to date)")
          + f" on {settings.clickhouse_url}/{settings.clickhouse_database}")
    if args.with_topic:
        from sendflowr.kafka_io import ensure_topic

        for topic in filter(None, (settings.kafka_topic, settings.decision_log_topic)):
            created = ensure_topic(settings, topic)
            print(f"topic {topic} " + ("created" if created else "already exists")
                  + f" on {settings.kafka_bootstrap_servers}")
    return 0
