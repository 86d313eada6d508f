"""Issue 16, C1: the embedded ClickHouse endpoint is a locked-down ClickHouse server.

Every attack of the issue, tried against the real endpoint process tests/conftest.py starts (chDB in its own
process, reached over loopback HTTP exactly as the stack reaches it): no credentials, a web page's request,
DNS rebinding, files and URLs through table functions, engines, the file() function, INTO OUTFILE / FROM
INFILE, statements smuggled behind another, the read-only user's limits, the engine's environment, and
malformed HTTP. Each one is refused with ClickHouse's own error and a 4xx, and the endpoint keeps serving.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import socket
import stat
import uuid
import zlib
from pathlib import Path

import httpx
import pytest

from sendflowr.clickhouse import get_client, password_for
from sendflowr.local import chdb_server, processes
from sendflowr.local.chdb_access import READER_USER, SECRETS_FILE
from sendflowr.local.processes import free_port
from sendflowr.migrations import apply_migrations
from sendflowr.settings import Settings

pytestmark = pytest.mark.integration
PASSWD_LINE = "root:"  # what a leaked /etc/passwd would contain


@pytest.fixture(scope="module")
def endpoint(base_settings: Settings, clickhouse: Settings):
    """The session's endpoint, its users' passwords, and a migrated database of this module's own."""
    stored = json.loads((base_settings.home / "secrets" / SECRETS_FILE).read_text())
    settings = base_settings.model_copy(update={"clickhouse_database": f"sec_{uuid.uuid4().hex[:10]}"})
    apply_migrations(settings)
    return settings, stored["users"]


def post(settings: Settings, sql: str | bytes, auth: tuple[str, str] | None = None, **kwargs) -> httpx.Response:
    body = sql.encode() if isinstance(sql, str) else sql
    return httpx.post(f"{settings.clickhouse_url}/", content=body, auth=auth, timeout=30, **kwargs)


def writer(endpoint) -> tuple[str, str]:
    settings, users = endpoint
    return settings.clickhouse_user, users[settings.clickhouse_user]


def reader(endpoint) -> tuple[str, str]:
    return READER_USER, endpoint[1][READER_USER]


def assert_refused(response: httpx.Response, code: int | None = None) -> None:
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    if code is not None:
        assert response.headers["X-ClickHouse-Exception-Code"] == str(code), response.text
    assert PASSWD_LINE not in response.text


# ------------------------------------------------------------------------------------------- who may ask


def test_requests_without_the_password_get_clickhouse_authentication_error(endpoint) -> None:
    settings, _ = endpoint
    user, password = writer(endpoint)
    table = f"{settings.clickhouse_database}.events"
    attempts = {
        "nothing": {},
        "wrong password": {"auth": (user, password + "x")},
        "empty password": {"auth": (user, "")},
        "unknown user": {"auth": ("admin", password)},
        "reader's password for the writer": {"auth": (user, reader(endpoint)[1])},
        "headers": {"headers": {"X-ClickHouse-User": user, "X-ClickHouse-Key": "guess"}},
        "parameters": {"params": {"user": user, "password": "guess"}},
        "garbage basic auth": {"headers": {"Authorization": "Basic !!!not-base64"}},
        "bearer": {"headers": {"Authorization": f"Bearer {password}"}},
        "two methods at once": {"auth": (user, password), "params": {"user": user, "password": password}},
    }
    for name, kwargs in attempts.items():
        for sql in (f"SELECT count() FROM {table}", f"DROP TABLE {table}", "CREATE DATABASE sec_attacker"):
            response = post(settings, sql, **kwargs)
            assert response.status_code == 403, (name, sql, response.status_code, response.text)
            assert response.headers["X-ClickHouse-Exception-Code"] == "516", name
            assert "AUTHENTICATION_FAILED" in response.text, name
    # nothing of it ran: the table is there and no database was made
    client = get_client(settings)
    assert client.command(f"EXISTS TABLE {table}") == 1
    assert client.command("SELECT count() FROM system.databases WHERE name = 'sec_attacker'") == 0
    # the three ways clickhouse-connect and curl send credentials all work
    for kwargs in ({"auth": (user, password)}, {"headers": {"X-ClickHouse-User": user, "X-ClickHouse-Key": password}},
                   {"params": {"user": user, "password": password}}):
        assert post(settings, "SELECT 7", **kwargs).text == "7\n"
    client.close()


def test_credentials_are_checked_before_the_body_is_read(endpoint) -> None:
    settings, _ = endpoint
    host, port = settings.clickhouse_host, settings.clickhouse_port
    with socket.create_connection((host, port), timeout=10) as sock:
        # 100 MB announced, nothing sent: the answer must come anyway, and the connection closes
        sock.sendall(f"POST / HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: 100000000\r\n\r\n".encode())
        answer = sock.recv(4096).decode("latin-1")
    assert answer.startswith("HTTP/1.1 403") and "X-ClickHouse-Exception-Code: 516" in answer
    assert "Connection: close" in answer


def test_a_web_page_cannot_use_the_endpoint(endpoint, tmp_path: Path) -> None:
    """The request any web page can send: a text/plain POST (no CORS preflight) carrying its Origin."""
    settings, _ = endpoint
    target = tmp_path / "written-by-a-web-page.txt"
    sql = f"INSERT INTO FUNCTION file('{target}', 'LineAsString') SELECT 'pwned'"
    for headers in ({"Origin": "http://evil.example", "Content-Type": "text/plain"},
                    {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"}):
        response = post(settings, sql, headers=headers)
        assert_refused(response, 497)
        # even a page that somehow had the password is refused: browsers are not clients of this endpoint
        assert_refused(post(settings, "SELECT 1", auth=writer(endpoint), headers=headers), 497)
    assert not target.exists()


def test_dns_rebinding_is_refused(endpoint) -> None:
    settings, _ = endpoint
    port = settings.clickhouse_port
    for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1:{port + 1}", ""):
        response = post(settings, "SELECT 1", auth=writer(endpoint), headers={"Host": host})
        assert_refused(response, 497)
    for host in (f"127.0.0.1:{settings.clickhouse_port}", f"localhost:{settings.clickhouse_port}"):
        assert post(settings, "SELECT 1", auth=writer(endpoint), headers={"Host": host}).text == "1\n"


# ------------------------------------------------------------------------------- what the writer may do


FILE_READS = [
    "SELECT * FROM file('/etc/passwd', 'LineAsString')",
    "SELECT file('/etc/passwd')",
    "SELECT `fil\\x65`('/etc/passwd')",
    'SELECT "fil\\x65"(\'/etc/passwd\')',
    "SELECT * FROM default.`/etc/passwd`",  # chDB's default database maps files as tables
    "SELECT * FROM sqlite('/etc/passwd', 't')",
    "SELECT * FROM executable('cat /etc/passwd', 'LineAsString', 'x String')",
    "SELECT * FROM icebergLocal('/etc')",
    "SELECT * FROM deltaLakeLocal('/etc')",
    "SELECT * FROM view(SELECT file('/etc/passwd'))",
    "EXPLAIN SYNTAX SELECT file('/etc/passwd')",
    "DESCRIBE (SELECT file('/etc/passwd'))",
    "SELECT 1 FORMAT Template SETTINGS format_template_row = '/etc/passwd'",
    "SELECT 1; SELECT file('/etc/passwd')",
    "SELECT 1 /* a comment */ ; SELECT * FROM file('/etc/passwd', 'LineAsString')",
]


@pytest.mark.parametrize("sql", FILE_READS)
def test_files_of_the_host_cannot_be_read(endpoint, sql: str) -> None:
    settings, _ = endpoint
    assert_refused(post(settings, sql, auth=writer(endpoint), params={"database": settings.clickhouse_database}))


def test_files_of_the_host_cannot_be_written(endpoint, tmp_path: Path) -> None:
    settings, _ = endpoint
    database = settings.clickhouse_database
    target = tmp_path / "out.txt"
    attempts = [
        f"INSERT INTO FUNCTION file('{target}', 'LineAsString') SELECT 'x'",
        f"SELECT 'x' INTO OUTFILE '{target}'",
        f"SELECT 'x' INTO OUTFILE '{target}' AND STDOUT",
        f"DESCRIBE TABLE {database}.events INTO OUTFILE '{target}'",
        f"CREATE TABLE {database}.leak (x String) ENGINE = File(LineAsString, '{target}')",
        f"CREATE DATABASE sec_fs ENGINE = Filesystem('{tmp_path}')",
        f"BACKUP TABLE {database}.events TO File('{target}')",
        f"INSERT INTO {database}.events SELECT * FROM {database}.events LIMIT 0; SELECT 'x' INTO OUTFILE '{target}'",
        f"INSERT INTO {database}.ingest_leases (kafka_topic) VALUES ('t'); SELECT 'x' INTO OUTFILE '{target}'",
        f"INSERT INTO {database}.ingest_leases (kafka_topic) FROM INFILE '/etc/passwd' FORMAT LineAsString",
        f"SET output_format_schema = '{target}'",
        f"SELECT 1 FORMAT Protobuf SETTINGS output_format_schema = '{target}'",
    ]
    for sql in attempts:
        assert_refused(post(settings, sql, auth=writer(endpoint)))
    assert not target.exists() and not list(tmp_path.iterdir())
    client = get_client(settings)
    assert client.command(f"EXISTS TABLE {database}.leak") == 0
    assert client.command(f"SELECT count() FROM {database}.ingest_leases WHERE kafka_topic = 't'") == 0
    client.close()


def test_no_urls_or_other_servers(endpoint) -> None:
    settings, _ = endpoint
    own = f"{settings.clickhouse_url}/ping"
    attempts = [
        f"SELECT * FROM url('{own}', 'LineAsString')",
        f"INSERT INTO FUNCTION url('{own}', 'LineAsString') SELECT 'x'",
        f"SELECT * FROM remote('127.0.0.1:{settings.clickhouse_port}', system.one)",
        "SELECT * FROM remoteSecure('127.0.0.1:9440', system.one)",
        "SELECT * FROM cluster('default', system.one)",
        "SELECT * FROM s3('http://127.0.0.1:1/b/k', 'LineAsString')",
        "SELECT * FROM mysql('127.0.0.1:3306', 'd', 't', 'u', 'p')",
        "SELECT * FROM postgresql('127.0.0.1:5432', 'd', 't', 'u', 'p')",
        "SELECT * FROM hdfs('hdfs://127.0.0.1:1/x', 'TSV', 'a String')",
        "SELECT * FROM jdbc('x', 'y', 'z')",
        "SELECT * FROM odbc('x', 'y', 'z')",
        "SELECT * FROM mongodb('127.0.0.1:1', 'd', 'c', 'u', 'p', 'a Int')",
        "SELECT * FROM redis('127.0.0.1:1', 'k', 'k String')",
        "SELECT * FROM azureBlobStorage('http://127.0.0.1:1', 'c', 'b')",
        f"CREATE TABLE {settings.clickhouse_database}.u (x String) ENGINE = URL('{own}', LineAsString)",
        f"CREATE TABLE {settings.clickhouse_database}.k (x String) ENGINE = Kafka SETTINGS kafka_broker_list = "
        "'127.0.0.1:1', kafka_topic_list = 't', kafka_group_name = 'g', kafka_format = 'LineAsString'",
        f"CREATE DICTIONARY {settings.clickhouse_database}.d (x String) PRIMARY KEY x "
        f"SOURCE(HTTP(url '{own}' format 'TSV')) LAYOUT(FLAT()) LIFETIME(0)",
        "SELECT 1 FORMAT AvroConfluent SETTINGS format_avro_schema_registry_url = 'http://127.0.0.1:1'",
        f"CREATE TABLE {settings.clickhouse_database}.x (x String) ENGINE = Executable('cat', 'LineAsString')",
        f"CREATE TABLE {settings.clickhouse_database}.y (x String) ENGINE = ExecutablePool('cat', 'LineAsString')",
        f"CREATE TABLE {settings.clickhouse_database}.z (x String DEFAULT file('/etc/passwd')) ENGINE = Memory",
        "SET dialect = 'prql'",
        "SYSTEM SHUTDOWN",
        "CREATE USER sec_attacker IDENTIFIED WITH no_password",
        "GRANT ALL ON *.* TO default",
    ]
    for sql in attempts:
        assert_refused(post(settings, sql, auth=writer(endpoint)))
    assert post(settings, "SELECT 1", auth=writer(endpoint)).text == "1\n"  # still up (no SYSTEM SHUTDOWN)


def test_the_writer_still_does_everything_sendflowr_needs(endpoint) -> None:
    """DDL, inserts with inline data (VALUES with parameters, CSV), body inserts, mutations, exchange."""
    settings, _ = endpoint
    database = settings.clickhouse_database
    client = get_client(settings)
    client.command(f"CREATE TABLE {database}.w (id UInt32, s String) ENGINE = MergeTree ORDER BY id")
    client.command(f"INSERT INTO {database}.w VALUES ({{i:UInt32}}, 'a;b'), (2, concat('file', '(x)'))",
                   parameters={"i": 1})
    response = post(settings, f"INSERT INTO {database}.w FORMAT CSV 3,\"c\"\n4,d\n", auth=writer(endpoint))
    assert response.status_code == 200, response.text
    client.insert(f"{database}.w", [[5, "e"]], column_names=["id", "s"])
    client.command(f"ALTER TABLE {database}.w ADD COLUMN n UInt8 DEFAULT 1")
    client.command(f"CREATE TABLE {database}.w2 AS {database}.w")
    client.command(f"EXCHANGE TABLES {database}.w AND {database}.w2")
    client.command(f"EXCHANGE TABLES {database}.w AND {database}.w2")
    assert client.query(f"SELECT id, s FROM {database}.w ORDER BY id").result_rows == [
        (1, "a;b"), (2, "file(x)"), (3, "c"), (4, "d"), (5, "e")]
    client.command(f"DROP TABLE {database}.w2")
    client.close()


def test_session_statements_cannot_poison_pooled_connections(endpoint) -> None:
    settings, _ = endpoint
    for sql in ("SET max_threads = 1", "USE system", "SET readonly = 1"):
        assert_refused(post(settings, sql, auth=writer(endpoint)), 48)
    # a per-request readonly runs on a read-only connection and leaves the writer's pool writable
    for _ in range(12):
        response = post(settings, "SELECT getSetting('readonly')", auth=writer(endpoint), params={"readonly": "1"})
        assert response.text == "1\n"
    client = get_client(settings)
    for _ in range(12):
        assert client.command("SELECT getSetting('readonly')") == 0
    client.close()


# ------------------------------------------------------------------------------------ the read-only user


def test_the_api_user_reads_and_can_do_nothing_else(endpoint) -> None:
    settings, _ = endpoint
    database = settings.clickhouse_database
    api = settings.model_copy(update={"clickhouse_user": READER_USER})
    client = get_client(api)  # the client factory finds this user's generated password too
    assert client.command(f"SELECT count() FROM {database}.events") == 0
    assert client.query_arrow(f"SELECT * FROM {database}.schema_migrations").num_rows > 0
    client.close()
    for sql in (f"INSERT INTO {database}.ingest_leases (kafka_topic) VALUES ('t')", f"DROP TABLE {database}.events",
                f"ALTER TABLE {database}.events DELETE WHERE 1", f"TRUNCATE TABLE {database}.events",
                f"CREATE TABLE {database}.r (x UInt8) ENGINE = Memory", "CREATE DATABASE sec_by_reader",
                f"OPTIMIZE TABLE {database}.events"):
        assert_refused(post(settings, sql, auth=reader(endpoint)), 164)
    for params in ({"readonly": "0"}, {"max_threads": "3"}):  # not liftable per request
        response = post(settings, "SELECT 1", auth=reader(endpoint), params=params)
        assert_refused(response, 164)
    # readonly=2 would allow changing settings: the reader stays at 1
    response = post(settings, "SELECT getSetting('readonly')", auth=reader(endpoint), params={"readonly": "2"})
    assert response.text == "1\n"
    assert_refused(post(settings, "SELECT 1 SETTINGS readonly = 0", auth=reader(endpoint)), 164)
    ok = post(settings, f"SELECT count() FROM {database}.events", auth=reader(endpoint))
    assert ok.text == "0\n"


# ----------------------------------------------------------------------------- secrets and the engine


def test_passwords_are_private_random_and_found_only_for_their_endpoint(endpoint) -> None:
    settings, users = endpoint
    secrets_dir = settings.home / "secrets"
    assert stat.S_IMODE(secrets_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((secrets_dir / SECRETS_FILE).stat().st_mode) == 0o600
    assert len(set(users.values())) == 2 and all(len(p) >= 40 for p in users.values())
    assert password_for(settings) == users[settings.clickhouse_user]
    elsewhere = settings.model_copy(update={"clickhouse_url": "http://127.0.0.1:1"})
    assert password_for(elsewhere) == ""  # another server never receives the embedded password
    configured = settings.model_copy(update={"clickhouse_password": "given"})
    assert password_for(configured) == "given"


def test_engine_process_gets_only_its_own_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine's /proc/<pid>/environ held every SENDFLOWR_* secret; now only what it uses."""
    secrets = {"SENDFLOWR_API_KEY": "api-secret-1", "SENDFLOWR_MAILGUN_SIGNING_KEY": "mailgun-secret-2",
               "SENDFLOWR_KLAVIYO_WEBHOOK_SECRET": "klaviyo-secret-3", "SENDFLOWR_WEBHOOKS_EVENTS_TOKEN": "token-4",
               "AWS_SECRET_ACCESS_KEY": "aws-secret-5"}
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)  # exported in the developer's shell
    settings = Settings(home=tmp_path / "home", clickhouse_url=f"http://127.0.0.1:{free_port()}",
                        api_key="api-secret-1", mailgun_signing_key="mailgun-secret-2")
    pid = chdb_server.start_background(settings)
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
        variables = dict(item.split("=", 1) for item in environ.split("\0") if "=" in item)
        for value in secrets.values():
            assert value not in environ
        assert {k for k in variables if k.startswith("SENDFLOWR_")} == {"SENDFLOWR_HOME", "SENDFLOWR_CLICKHOUSE_URL",
                                                                     "SENDFLOWR_CLICKHOUSE_USER"}
        first = json.loads((settings.home / "secrets" / SECRETS_FILE).read_text())["users"]
        client = get_client(settings, with_database=False)
        assert client.command("SELECT 1") == 1
        client.close()
    finally:
        processes.stop(settings, chdb_server.PROCESS_NAME)
    chdb_server.start_background(settings)  # a restart keeps the per-install passwords
    try:
        assert json.loads((settings.home / "secrets" / SECRETS_FILE).read_text())["users"] == first
    finally:
        processes.stop(settings, chdb_server.PROCESS_NAME)


def test_the_endpoint_serves_loopback_only(tmp_path: Path) -> None:
    from sendflowr.errors import SendflowrError

    with pytest.raises(SendflowrError, match="loopback only"):
        chdb_server.open_server(Settings(home=tmp_path, clickhouse_url="http://0.0.0.0:8123"))


# ------------------------------------------------------------------------------------ hostile HTTP input


def test_compressed_bodies_are_bounded_once_decompressed() -> None:
    import lz4.frame

    from sendflowr.local.chdb_errors import ClickHouseError
    from sendflowr.local.chdb_http import decode_body

    try:
        from compression import zstd
    except ImportError:
        from backports import zstd
    zeros = b"0" * (8 << 20)  # 8 MiB in a few KiB: a bomb against a 1 MiB limit
    for encoding, packed in (("gzip", gzip.compress(zeros)), ("deflate", zlib.compress(zeros)),
                             ("lz4", lz4.frame.compress(zeros)), ("zstd", zstd.compress(zeros))):
        assert len(packed) < 64 * 1024
        with pytest.raises(ClickHouseError) as refused:
            decode_body(packed, encoding, limit=1 << 20)
        assert refused.value.http_status == 413
        assert decode_body(packed, encoding, limit=8 << 20) == zeros


def raw_request(settings: Settings, head: str, body: bytes = b"") -> str:
    with socket.create_connection((settings.clickhouse_host, settings.clickhouse_port), timeout=30) as sock:
        sock.sendall(head.encode("latin-1") + b"\r\n\r\n" + body)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode("latin-1")


def test_malformed_http_gets_a_4xx_never_a_5xx(endpoint) -> None:
    settings, _ = endpoint
    user, password = writer(endpoint)
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    host = f"Host: {settings.clickhouse_host}:{settings.clickhouse_port}"
    auth = f"Authorization: Basic {token}"
    cases = {
        "bad content-length": (f"POST / HTTP/1.1\r\n{host}\r\n{auth}\r\nContent-Length: ten", b""),
        "bad chunk size": (f"POST / HTTP/1.1\r\n{host}\r\n{auth}\r\nTransfer-Encoding: chunked",
                           b"zz\r\nab\r\n0\r\n\r\n"),
        "smuggling": (f"POST / HTTP/1.1\r\n{host}\r\n{auth}\r\nTransfer-Encoding: chunked\r\nContent-Length: 5",
                      b"0\r\n\r\n"),
        "unknown transfer encoding": (f"POST / HTTP/1.1\r\n{host}\r\n{auth}\r\nTransfer-Encoding: gzip", b""),
        "too large": (f"POST / HTTP/1.1\r\n{host}\r\n{auth}\r\nContent-Length: {1 << 40}", b""),
        "corrupt gzip": (f"POST / HTTP/1.1\r\n{host}\r\n{auth}\r\nContent-Encoding: gzip\r\nContent-Length: 4",
                         b"\x1f\x8b\x00\x00"),
        "truncated deflate": (f"POST / HTTP/1.1\r\n{host}\r\n{auth}\r\nContent-Encoding: deflate\r\n"
                              f"Content-Length: 6", zlib.compress(b"SELECT 1")[:6]),
        "unknown encoding": (f"POST / HTTP/1.1\r\n{host}\r\n{auth}\r\nContent-Encoding: br\r\nContent-Length: 1",
                             b"x"),
        "not utf-8": (f"POST / HTTP/1.1\r\n{host}\r\n{auth}\r\nContent-Length: 4", b"\xff\xfe\xfd\xfc"),
        "deep nesting": (f"POST / HTTP/1.1\r\n{host}\r\n{auth}\r\nContent-Length: 20007",
                         b"SELECT " + b"(" * 10000 + b")" * 10000),
        "empty query": (f"POST / HTTP/1.1\r\n{host}\r\n{auth}\r\nContent-Length: 3", b"   "),
        "unknown method": (f"DELETE / HTTP/1.1\r\n{host}\r\n{auth}", b""),
        "no such path": (f"GET /play HTTP/1.1\r\n{host}\r\n{auth}", b""),
        "bad types": (f"POST / HTTP/1.1\r\n{host}\r\n{auth}\r\nContent-Length: 14", b"SELECT 1 + 'a'"),
        "out of range": (f"POST / HTTP/1.1\r\n{host}\r\n{auth}\r\nContent-Length: 38",
                         b"SELECT toDate('0001-01-01') - 99999999"),
        "unicode garbage": (f"POST / HTTP/1.1\r\n{host}\r\n{auth}\r\nContent-Length: 13",
                            "SELECT '\ud800'".encode("utf-8", "surrogatepass")),
    }
    for name, (head, body) in cases.items():
        answer = raw_request(settings, head, body)
        status = int(answer.split(" ", 2)[1])
        assert 400 <= status < 500 or (status == 200 and name == "out of range"), (name, answer[:300])
    huge_text = post(settings, b"SELECT '" + b"0" * (5 << 20) + b"'", auth=(user, password))
    assert huge_text.status_code == 413 and len(huge_text.content) < 4096  # refused, and not echoed
    assert post(settings, "SELECT 1", auth=(user, password)).text == "1\n"  # still serving
    assert os.path.exists(f"/proc/{processes.running_pid(settings, chdb_server.PROCESS_NAME)}")
