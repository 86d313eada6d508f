"""ClickHouse client factory: every process reaches ClickHouse by URL through clickhouse-connect.

The embedded default (chDB behind `sendflowr clickhouse serve`) and a real server look the same here.
"""

from __future__ import annotations

import ipaddress
import json
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError as DriverError
from clickhouse_connect.driver.httpclient import HttpClient
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

from sendflowr.errors import SendflowrError
from sendflowr.local.chdb_access import embedded_password
from sendflowr.settings import Settings, reveal

# The oldest ClickHouse SendFlowr runs on. Every load sends deduplicate_insert_select='force_enable': servers
# before 25.12 reject the setting as unknown, 26.1 throws on our INSERT ... SELECT (dropping the setting there
# silently doubles a replay), 26.3 LTS runs it as written. docker-compose.yml pins a 26.3 release, and .ci/run
# tests the SQL on that release's engine (chdb-core) as well as on the default one.
SERVER_VERSION_FLOOR = (26, 3)


class ClickHouseUnavailable(SendflowrError):
    pass


def password_for(settings: Settings) -> str:
    """The configured password, else the per-install one of the embedded endpoint when settings.clickhouse_url is
    the endpoint this state directory started (chdb_access keeps it in <home>/secrets, for that URL only)."""
    configured = reveal(settings.clickhouse_password)
    if configured:
        return configured
    return embedded_password(settings) or ""
class ClickHouseTooOld(SendflowrError):
    pass


def require_supported_version(version: str, url: str) -> None:
    """Refuse a server older than SERVER_VERSION_FLOOR, naming the floor (`version` as `SELECT version()`)."""
    parts = [int(p) for p in re.findall(r"\d+", version)[:2]]
    if len(parts) < 2 or tuple(parts) < SERVER_VERSION_FLOOR:
        floor = ".".join(map(str, SERVER_VERSION_FLOOR))
        raise ClickHouseTooOld(
            f"ClickHouse at {url} is version {version or '(unknown)'}; SendFlowr needs ClickHouse {floor} or later "
            f"(its loads use deduplicate_insert_select='force_enable', which older releases reject or break). "
            f"Upgrade the server (docker-compose.yml pins one) or point SENDFLOWR_CLICKHOUSE_URL at a newer one.")


# Transient errors: the server was busy or the connection broke, nothing was wrong with the statement.
# TIMEOUT_EXCEEDED, SOCKET_TIMEOUT, NETWORK_ERROR, CANNOT_SCHEDULE_TASK; and, in cluster mode, the quorum waits of
# sendflowr.cluster.TRANSIENT (UNSATISFIED_QUORUM_FOR_PREVIOUS_WRITE, REPLICA_IS_NOT_IN_QUORUM).
TRANSIENT_CODES = frozenset({159, 209, 210, 286, 289, 439})
# Refused before the statement started: TOO_MANY_SIMULTANEOUS_QUERIES, TABLE_IS_READ_ONLY (a replica that lost Keeper).
NOT_STARTED_CODES = frozenset({202, 242})
_READ = re.compile(r"^\s*(?:\(\s*)*(?:SELECT|WITH|SHOW|DESCRIBE|DESC|EXISTS|EXPLAIN)\b", re.IGNORECASE)
_CODE = re.compile(r"\bCode: (\d+)\.")


@dataclass(frozen=True)
class Retry:
    """Retries of transient errors (sendflowr.clickhouse.transient): after each delay in `delays` (seconds), while the
    statement may safely run again. `log` hears of every retry."""

    delays: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0)
    log: Callable[[str], None] | None = None


def transient(exc: BaseException) -> str | None:
    """'not_started' when the statement surely never ran (connection refused, the server refused it at admission),
    'interrupted' when it may have run in part or whole (connection reset, timeouts, socket errors), None when the
    error is not transient (a wrong statement stays wrong)."""
    if not isinstance(exc, DriverError):
        return None
    code = getattr(exc, "code", None)
    if code is None and (found := _CODE.search(str(exc))):
        code = int(found.group(1))
    if code in NOT_STARTED_CODES:
        return "not_started"
    if code in TRANSIENT_CODES or (code == 241 and "(total)" in str(exc)):  # the server's memory, not the query's
        return "interrupted"
    if code is None:  # a transport error: clickhouse-connect raises it from urllib3's
        cause = exc.__cause__
        while cause is not None and not isinstance(cause, NewConnectionError | ConnectTimeoutError):
            cause = getattr(cause, "reason", None) or cause.__cause__ or cause.__context__
        return "not_started" if cause is not None else "interrupted"
    return None


def replayable(statement: str, settings: Mapping[str, Any] | None) -> bool:
    """A statement that may run twice with the effect of once: a read, or a write carrying an insert deduplication
    token (the engine drops a block it already has; every ingestion load does, sendflowr/ingest/sink.py)."""
    return bool(_READ.match(statement) or (settings or {}).get("insert_deduplication_token"))


class SendflowrClient(HttpClient):
    """clickhouse-connect's HTTP client, retrying transient errors where that is safe (`Retry`, docs/ARCHITECTURE.md):
    any statement the server never started; reads and deduplicated inserts also when they were interrupted.
    Other writes (plain inserts, DDL, mutations) are never replayed after an interruption: they may have run."""

    retry: Retry | None = None
    _depth = threading.local()

    def _retrying(self, what: str, replay: bool, call: Callable[[], Any]) -> Any:
        if self.retry is None or getattr(self._depth, "n", 0):
            return call()  # no policy, or inside an outer retried call (query() runs command())
        delays = iter(self.retry.delays)
        self._depth.n = 1
        try:
            while True:
                try:
                    return call()
                except DriverError as exc:
                    kind = transient(exc)
                    delay = next(delays, None) if kind == "not_started" or (kind and replay) else None
                    if delay is None:
                        raise
                    if self.retry.log:
                        self.retry.log(f"ClickHouse: {kind} ({str(exc).splitlines()[0][:200]}); retrying "
                                       f"{what} in {delay:g} s")
                    time.sleep(delay)
        finally:
            self._depth.n = 0

    def _query_with_context(self, context):
        return self._retrying("a query", replayable(context.final_query or "", context.settings),
                              lambda: super(SendflowrClient, self)._query_with_context(context))

    def raw_query(self, query: str, parameters=None, settings=None, *args, **kwargs):
        return self._retrying("a query", replayable(query, settings),
                              lambda: super(SendflowrClient, self).raw_query(query, parameters, settings, *args,
                                                                             **kwargs))

    def command(self, cmd: str, parameters=None, data=None, settings=None, *args, **kwargs):
        return self._retrying("a statement", data is None and replayable(cmd, settings),
                              lambda: super(SendflowrClient, self).command(cmd, parameters, data, settings, *args,
                                                                           **kwargs))

    def insert(self, table=None, data=None, *args, **kwargs):
        if kwargs.get("context") is not None:  # a caller's context is consumed by the first attempt
            return super().insert(table, data, *args, **kwargs)
        return self._retrying(f"an insert into {table}", replayable("", kwargs.get("settings")),
                              lambda: super(SendflowrClient, self).insert(table, data, *args, **kwargs))

    def raw_insert(self, table=None, column_names=None, insert_block=None, settings=None, *args, **kwargs):
        replay = isinstance(insert_block, bytes | bytearray | str) and replayable("", settings)
        return self._retrying(f"an insert into {table}", replay,
                              lambda: super(SendflowrClient, self).raw_insert(table, column_names, insert_block,
                                                                              settings, *args, **kwargs))


def log_comment(**tags: str) -> str:
    """The `log_comment` setting that tags every statement of a client (system.query_log.log_comment): JSON, so
    `JSONExtractString(log_comment, 'dagster_run_id')` finds a run's statements."""
    return json.dumps(tags, sort_keys=True, separators=(",", ":"))


def get_client(settings: Settings, *, with_database: bool = True, comment: str | None = None,
               retry: Retry | None = None, **kwargs) -> Client:
    """A client on settings.clickhouse_url; a clear error (not a stack trace) when nothing answers. `comment` is sent
    as `log_comment` with every statement (log_comment()); `retry` retries transient errors (SendflowrClient)."""
    server_settings = dict(kwargs.pop("settings", None) or {})
    if comment:
        server_settings["log_comment"] = comment
    try:
        client = SendflowrClient(
            interface="https" if settings.clickhouse_url.startswith("https") else "http",
            host=settings.clickhouse_host,
            port=settings.clickhouse_port,
            username=settings.clickhouse_user,
            password=password_for(settings),
            database=settings.clickhouse_database if with_database else "",
            # No HTTP session: sessions serialize a client's queries, and every SendFlowr client is shared
            # by threads (pipelined inserts) without needing temporary tables.
            autogenerate_session_id=False,
            # Over loopback, compressing bodies (LZ4 both ways) costs both processes CPU and saves nothing.
            compress=kwargs.pop("compress", not is_loopback(settings.clickhouse_host)),
            connect_timeout=kwargs.pop("connect_timeout", 5),
            send_receive_timeout=kwargs.pop("send_receive_timeout", 600),
            ca_cert=settings.clickhouse_ca_cert or None,
            settings=server_settings,
            **kwargs,
        )
    except DriverError as exc:
        raise ClickHouseUnavailable(
            f"ClickHouse at {settings.clickhouse_url} did not answer ({exc.__class__.__name__}: "
            f"{str(exc).splitlines()[0][:300]}). For the embedded default run `sendflowr clickhouse start` "
            f"(or `make up`); otherwise check SENDFLOWR_CLICKHOUSE_URL."
        ) from exc
    try:  # the client asked `SELECT version()` while connecting: checking costs no round trip
        require_supported_version(client.server_version or "", settings.clickhouse_url)
    except ClickHouseTooOld:
        client.close()
        raise
    client.retry = retry
    return client


def row_count(client: Client, database: str, table: str) -> int:
    """Rows of a table (from the parts' metadata for a MergeTree: no scan)."""
    return int(client.command(f"SELECT count() FROM {database}.{table}"))


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def wait_for_clickhouse(settings: Settings, timeout: float = 30.0) -> Client:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return get_client(settings, with_database=False)
        except ClickHouseUnavailable:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.25)
