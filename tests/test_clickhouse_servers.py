"""ClickHouse reached the way production reaches it: over TLS with the CA as a setting, and behind a load
balancer that may send one writer's statements to different replicas.

The "replicas" are two real chDB endpoints (each its own engine and data) behind tests/http_proxy.py, which
routes each request, not each connection, as an HTTP load balancer does. Ingestion's in-memory scratch
(ingest_staging, ingest_known_ids) lives on one server only, so a load statement that reaches the other one
must fail loudly instead of reading an empty staging and committing its ranges (silent loss); rerun against
one server, the same ranges then land exactly once.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from clickhouse_connect.driver.exceptions import DatabaseError
from http_proxy import RoutingProxy
from tls_material import make_server_tls

from sendflowr.clickhouse import ClickHouseUnavailable, get_client, password_for
from sendflowr.events import validate_event
from sendflowr.ingest import IngestOptions, ingest_once
from sendflowr.ingest.run import Hooks
from sendflowr.kafka_io import produce_all
from sendflowr.local import chdb_server, processes
from sendflowr.local.processes import free_port
from sendflowr.migrations import apply_migrations
from sendflowr.settings import Settings

pytestmark = pytest.mark.integration

SCRATCH_REFUSAL = "does not hold the attempt's"


def _address(settings: Settings) -> tuple[str, int]:
    return settings.clickhouse_host, settings.clickhouse_port


@pytest.fixture(scope="module")
def replica_b(tmp_path_factory: pytest.TempPathFactory, clickhouse: Settings) -> Iterator[Settings]:
    """A second ClickHouse server (its own chDB engine and data), as a second replica behind a balancer: the
    same user and password as the first, as replicas of one cluster have."""
    home = tmp_path_factory.mktemp("replica-b")
    other = Settings(home=home, clickhouse_url=f"http://127.0.0.1:{free_port()}",
                     clickhouse_password=password_for(clickhouse))
    chdb_server.start_background(other)
    yield other
    processes.stop(other, chdb_server.PROCESS_NAME)


@pytest.fixture
def two_replicas(settings: Settings, replica_b: Settings) -> Settings:
    """Replica B with the same database and schema as the test's own server (replica A)."""
    b = replica_b.model_copy(update={"clickhouse_database": settings.clickhouse_database})
    apply_migrations(b)
    return b


def _events(count: int, tag: str) -> list[dict]:
    start = datetime.now(UTC) - timedelta(days=1)
    events = [{"event_id": f"{tag}-{n}", "event_type": "opened",
               "occurred_at": (start + timedelta(seconds=n)).strftime("%Y-%m-%dT%H:%M:%SZ"),
               "identifiers": {"email": f"p{n % 97}@example.org"}, "esp": "custom"} for n in range(count)]
    for event in events:
        validate_event(event)
    return events


def _produce(settings: Settings, events: list[dict]) -> None:
    produce_all(settings, [(None, json.dumps(e).encode()) for e in events])


def _committed_ranges(settings: Settings) -> int:
    client = get_client(settings)
    try:
        return int(client.command(f"SELECT count() FROM {settings.clickhouse_database}.ingest_ranges "
                                  "WHERE state = 'committed'"))
    finally:
        client.close()


def _event_ids(settings: Settings) -> list[str]:
    client = get_client(settings)
    try:
        return [r[0] for r in client.query(f"SELECT event_id FROM {settings.clickhouse_database}.events").result_rows]
    finally:
        client.close()


def _through(settings: Settings, proxy: RoutingProxy) -> Settings:
    # the balancer's URL is not the endpoint's own, so the password is given, as it is for any server
    return settings.model_copy(update={"clickhouse_url": proxy.url, "clickhouse_password": password_for(settings)})


def _ingest(settings: Settings, hooks: Hooks | None = None):
    client = get_client(settings)
    try:
        return ingest_once(settings, client, IngestOptions(until_caught_up=True), log=lambda _line: None, hooks=hooks)
    finally:
        client.close()


def test_a_load_on_a_server_without_the_staging_is_refused_then_replayed_exactly_once(settings, two_replicas):
    events = _events(3000, f"lb-{uuid.uuid4().hex[:6]}")
    _produce(settings, events)
    with RoutingProxy([_address(settings), _address(two_replicas)]) as proxy:
        proxy.route = lambda _n: 0  # everything to replica A ...

        class BalancerMovesOn(Hooks):
            def after_stage(self) -> None:  # ... until the staging is written: then every statement to B
                proxy.route = lambda _n: 1

        with pytest.raises(DatabaseError, match=SCRATCH_REFUSAL):
            _ingest(_through(settings, proxy), BalancerMovesOn())
        assert 1 in proxy.requests and 0 in proxy.requests
    # Refused, not committed: neither server records the ranges as ingested, so nothing is silently skipped.
    assert _committed_ranges(settings) == 0 and _committed_ranges(two_replicas) == 0
    assert _event_ids(two_replicas) == []

    # The writer pinned to one server again: the planned ranges are replayed and every event lands once.
    report = _ingest(settings)
    assert report.replayed
    landed = _event_ids(settings)
    assert sorted(landed) == sorted(e["event_id"] for e in events)
    assert report.inserted == len(events)


def test_round_robin_per_request_never_commits_an_empty_load(settings, two_replicas):
    events = _events(2000, f"rr-{uuid.uuid4().hex[:6]}")
    _produce(settings, events)
    with RoutingProxy([_address(settings), _address(two_replicas)]) as proxy:
        with pytest.raises(DatabaseError, match=SCRATCH_REFUSAL):
            _ingest(_through(settings, proxy))
        assert set(proxy.requests) == {0, 1}
    assert _committed_ranges(settings) == 0 and _committed_ranges(two_replicas) == 0

    _ingest(settings)
    assert sorted(_event_ids(settings)) == sorted(e["event_id"] for e in events)


def test_clickhouse_over_tls_is_verified_with_the_ca_setting(settings, tmp_path):
    tls = make_server_tls(tmp_path / "tls")
    with RoutingProxy([_address(settings)], certificate=tls.certificate, key=tls.key) as proxy:
        secure = _through(settings, proxy)
        assert secure.clickhouse_url.startswith("https://")
        with pytest.raises(ClickHouseUnavailable, match="(?i)certificate"):
            get_client(secure)  # the system CAs do not know the test's CA: refused, not silently trusted
        trusted = Settings(**{**secure.model_dump(), "clickhouse_ca_cert": str(tls.ca)})
        client = get_client(trusted)
        try:
            assert client.command(f"SELECT count() FROM {settings.clickhouse_database}.schema_migrations") > 0
        finally:
            client.close()
        assert apply_migrations(trusted) == []  # the whole schema path works over TLS (already applied)
