"""The ClickHouse client's retries (sendflowr.clickhouse.SendflowrClient) on the real engine, behind a proxy that
answers transient ClickHouse errors before or after the engine ran the statement, or is not there at all: a retry
happens exactly where running the statement again cannot change the result."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError
from http_proxy import RoutingProxy

from sendflowr.clickhouse import Retry, get_client, password_for, transient
from sendflowr.settings import Settings

pytestmark = pytest.mark.integration

FAST = (0.05, 0.05, 0.05)


class Faults:
    """Answers `code` to the first `times` statements holding `marker`, `when` ("before" or "after" the engine runs
    them), and counts every statement holding it."""

    def __init__(self, marker: str, when: str, code: int, times: int = 1):
        self.marker, self.when, self.code, self.left, self.seen = marker, when, code, times, 0

    def __call__(self, statement: str) -> tuple[str, int] | None:
        if self.marker not in statement:
            return None
        self.seen += 1
        if self.left > 0:
            self.left -= 1
            return self.when, self.code
        return None


def _through(settings: Settings, proxy: RoutingProxy) -> Settings:
    # the embedded endpoint's password is found for its own URL only: a balancer is configured with it
    return settings.model_copy(update={"clickhouse_url": proxy.url, "clickhouse_password": password_for(settings)})


@pytest.fixture
def proxied(settings: Settings):
    """(settings pointing at a proxy in front of the test's endpoint, the proxy)."""
    with RoutingProxy([(settings.clickhouse_host, settings.clickhouse_port)]) as proxy:
        yield _through(settings, proxy), proxy


@pytest.fixture
def table(ch, settings: Settings) -> str:
    name = f"{settings.clickhouse_database}.t_{uuid.uuid4().hex[:8]}"
    ch.command(f"CREATE TABLE {name} (n UInt32) ENGINE = MergeTree ORDER BY n "
               "SETTINGS non_replicated_deduplication_window = 100")
    return name


def _client(settings: Settings, retries: list[str] | None = None):
    return get_client(settings, retry=Retry(delays=FAST, log=None if retries is None else retries.append))


def test_a_read_interrupted_by_a_socket_error_is_retried(proxied) -> None:
    settings, proxy = proxied
    retries: list[str] = []
    client = _client(settings, retries)
    proxy.fault = faults = Faults("retry_me_read", "after", 209, times=2)
    assert client.command("SELECT 41 + 1 AS retry_me_read") == 42
    assert faults.seen == 3 and len(retries) == 2 and "209" in retries[0]


def test_without_a_policy_nothing_is_retried(proxied) -> None:
    settings, proxy = proxied
    client = get_client(settings)  # what every caller but the Dagster resource gets
    proxy.fault = faults = Faults("retry_me_not", "after", 209)
    with pytest.raises(DatabaseError):
        client.command("SELECT 1 AS retry_me_not")
    assert faults.seen == 1


def test_a_wrong_statement_is_not_retried(proxied) -> None:
    settings, proxy = proxied
    client = _client(settings)
    proxy.fault = faults = Faults("no_such_column_here", "after", 0, times=0)  # counts only
    with pytest.raises(DatabaseError, match="no_such_column_here"):
        client.command("SELECT no_such_column_here")
    assert faults.seen == 1


def test_a_plain_insert_that_may_have_run_is_never_replayed(proxied, table: str, ch) -> None:
    settings, proxy = proxied
    client = _client(settings)
    proxy.fault = faults = Faults(f"INSERT INTO {table}", "after", 209)
    with pytest.raises(DatabaseError):
        client.insert(table, [[1], [2]], column_names=["n"])
    assert faults.seen == 1
    assert ch.command(f"SELECT count() FROM {table}") == 2  # it ran once; a replay would have doubled it


def test_a_deduplicated_insert_is_replayed_and_lands_once(proxied, table: str, ch) -> None:
    settings, proxy = proxied
    client = _client(settings)
    proxy.fault = faults = Faults(f"INSERT INTO {table}", "after", 210)
    client.insert(table, [[1], [2]], column_names=["n"], settings={"insert_deduplication_token": "range-0-2"})
    assert faults.seen == 2
    assert ch.command(f"SELECT count() FROM {table}") == 2  # the engine dropped the replayed block


def test_a_statement_refused_before_it_ran_is_retried_even_when_it_writes(proxied, table: str, ch) -> None:
    settings, proxy = proxied
    client = _client(settings)
    proxy.fault = faults = Faults(f"INSERT INTO {table}", "before", 202, times=2)  # TOO_MANY_SIMULTANEOUS_QUERIES
    client.insert(table, [[1], [2], [3]], column_names=["n"])
    assert faults.seen == 3 and ch.command(f"SELECT count() FROM {table}") == 3


def test_connection_refused_is_retried_until_the_server_is_back(settings: Settings, table: str, ch) -> None:
    backend = [(settings.clickhouse_host, settings.clickhouse_port)]
    with RoutingProxy(backend) as first:
        gone = _through(settings, first)
        client, plain = get_client(gone, retry=Retry(delays=(0.2,) * 25)), get_client(gone)
    for c in (client, plain):
        c.close_connections()  # the proxy is gone: the next statement meets a refused connection
    with pytest.raises(OperationalError) as refused:
        plain.command("SELECT 1")
    assert transient(refused.value) == "not_started"

    back: list[RoutingProxy] = []
    threading.Timer(1.0, lambda: back.append(RoutingProxy(backend, port=first.port).__enter__())).start()
    started = time.monotonic()
    try:
        client.insert(table, [[7]], column_names=["n"])  # a plain insert: retried only because nothing ran
    finally:
        time.sleep(0.1)
        for proxy in back:
            proxy.__exit__()
    assert time.monotonic() - started >= 0.9
    assert ch.command(f"SELECT count() FROM {table}") == 1
