"""One ingestion writer per topic at a time, across processes and machines, kept in ClickHouse itself.

Acquire = insert a lease row, then read back the earliest unexpired, unreleased lease of the topic:
whoever holds it wins and everyone else withdraws. ClickHouse reads see every finished insert on one
node, so two runs racing both see the same winner.
"""

from __future__ import annotations

from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from collections.abc import Iterator

from clickhouse_connect.driver.client import Client

from sendflowr.errors import SendflowrError


class LeaseHeld(SendflowrError):
    pass


def _winner(client: Client, database: str, topic: str) -> tuple[str, datetime] | None:
    rows = client.query(
        f"SELECT holder, max(expires_at) AS until FROM {database}.ingest_leases "
        "WHERE kafka_topic = {topic:String} GROUP BY holder "
        "HAVING max(released) = 0 AND until > now64(6) ORDER BY min(acquired_at), holder LIMIT 1",
        parameters={"topic": topic},
    ).result_rows
    return (rows[0][0], rows[0][1]) if rows else None


def _write(client: Client, database: str, topic: str, holder: str, ttl: timedelta, released: int) -> None:
    client.insert(f"{database}.ingest_leases",
                  [[topic, holder, datetime.now(UTC) + ttl, released]],
                  column_names=["kafka_topic", "holder", "expires_at", "released"])


@contextmanager
def ingest_lease(client: Client, database: str, topic: str, holder: str,
                 ttl: timedelta = timedelta(minutes=10)) -> Iterator[None]:
    _write(client, database, topic, holder, ttl, released=0)
    winner = _winner(client, database, topic)
    if winner is None or winner[0] != holder:
        _write(client, database, topic, holder, ttl, released=1)
        other, until = winner if winner else ("?", None)
        raise LeaseHeld(f"another ingestion run ({other}) holds the lease on topic {topic!r} until {until}; "
                        "this run ingested nothing")
    try:
        yield
    finally:
        _write(client, database, topic, holder, ttl, released=1)


def renew(client: Client, database: str, topic: str, holder: str, ttl: timedelta = timedelta(minutes=10)) -> None:
    _write(client, database, topic, holder, ttl, released=0)
