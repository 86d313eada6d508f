"""ClickHouse client factory: every process reaches ClickHouse by URL through clickhouse-connect.

The embedded default (chDB behind `sendflowr clickhouse serve`) and a real server look the same here.
"""

from __future__ import annotations

import ipaddress
import re
import time

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError as DriverError

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


def get_client(settings: Settings, *, with_database: bool = True, **kwargs) -> Client:
    """A client on settings.clickhouse_url; a clear error (not a stack trace) when nothing answers."""
    try:
        client = clickhouse_connect.get_client(
            dsn=None,
            host=settings.clickhouse_host,
            port=settings.clickhouse_port,
            interface="https" if settings.clickhouse_url.startswith("https") else "http",
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
    return client


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
