"""The embedded ClickHouse endpoint (chDB behind ClickHouse's HTTP interface) against clickhouse-connect.

Everything here runs the real chDB engine and the stock clickhouse-connect HTTP client; nothing is mocked.
The only instrumentation is a request-handler subclass that records the headers of POST requests, so tests
can tell that compression and chunked transfer really reached the server.

chDB lets one process hold one data directory at a time, so the endpoint fixture is class-scoped: it is closed
before the lifecycle tests open other directories in this process.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import clickhouse_connect
import httpx
import numpy as np
import pandas as pd
import pytest
from clickhouse_connect.driver.exceptions import DatabaseError

from sendflowr.clickhouse import get_client
from sendflowr.errors import SendflowrError
from sendflowr.local import chdb_server, processes
from sendflowr.local.chdb_server import ChdbHttpServer, open_server
from sendflowr.settings import Settings

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"
POOL_SIZE = 4
TEST_DATABASE = "endpoint_tests"
UTC = dt.UTC


# -------------------------------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def make_settings(root: Path, port: int | None = None) -> Settings:
    return Settings(
        home=root / "home", chdb_path=root / "chdb", clickhouse_url=f"http://{HOST}:{port or 8123}"
    )


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


@dataclass
class RecordedRequest:
    params: dict[str, str]
    headers: dict[str, str]
    body_head: str  # the start of the decoded body, where clickhouse-connect may put the statement

    @property
    def statement(self) -> str:
        return self.params.get("query") or self.body_head


@dataclass
class Endpoint:
    server: ChdbHttpServer
    thread: threading.Thread
    requests: list[RecordedRequest] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def auth(self) -> tuple[str, str]:
        """The writer's credentials (the endpoint generated them into its state directory)."""
        return self.server.users.writer, self.server.users.writer_password

    def client(self, **kwargs):
        """A writer's client in the tests' own database (chDB's `default` also maps files as tables, so creating
        tables there needs the FILE grant, which the endpoint's engine user does not have)."""
        user, password = self.auth
        kwargs.setdefault("database", TEST_DATABASE)
        return clickhouse_connect.get_client(host=HOST, port=self.port, username=user, password=password, **kwargs)

    def requests_for(self, table: str) -> list[RecordedRequest]:
        return [r for r in list(self.requests) if table in r.statement]

    def inserts_into(self, table: str) -> list[RecordedRequest]:
        return [r for r in self.requests_for(table) if r.statement.lstrip().upper().startswith("INSERT")]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)
        self.server.engine.close()


def assert_kept(settings: Settings, rows: list[tuple[int, int]]) -> None:
    """A new owner of the directory serves the `kept` table with these (count, sum) rows."""
    reopened = start_endpoint(settings)
    try:
        client = reopened.client()
        assert client.query("SELECT count(), sum(id) FROM kept").result_rows == rows
        client.close()
    finally:
        reopened.stop()


def start_endpoint(settings: Settings) -> Endpoint:
    """open_server on a free port, serving in a thread, with POST headers recorded."""
    server = open_server(settings, host=HOST, port=0, pool_size=POOL_SIZE)
    recorded: list[RecordedRequest] = []

    class RecordingHandler(chdb_server._Handler):
        def _read_body(self) -> bytes:
            body = super()._read_body()
            recorded.append(
                RecordedRequest(
                    dict(parse_qsl(urlsplit(self.path).query)),
                    {k.lower(): v for k, v in self.headers.items()},
                    body[:300].decode("utf-8", errors="replace"),
                )
            )
            return body

    server.RequestHandlerClass = RecordingHandler
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    endpoint = Endpoint(server, thread, recorded)
    bare = endpoint.client(database="")
    bare.command(f"CREATE DATABASE IF NOT EXISTS {TEST_DATABASE}")
    bare.close()
    return endpoint


@pytest.fixture(scope="class")
def endpoint(tmp_path_factory) -> Endpoint:
    ep = start_endpoint(make_settings(tmp_path_factory.mktemp("chdb-endpoint")))
    yield ep
    ep.stop()


@pytest.fixture(scope="class")
def admin(endpoint):
    client = endpoint.client()
    yield client
    client.close()


def normalize(value):
    """Compare values across pandas/numpy/arrow/python representations; nulls become None."""
    if isinstance(value, np.ndarray | list | tuple):
        return [normalize(v) for v in value]
    if isinstance(value, dt.datetime | pd.Timestamp):
        # clickhouse-connect's default tz_mode returns naive UTC; arrow and pandas may carry the zone.
        stamp = pd.Timestamp(value)
        return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value


def column_values(df: pd.DataFrame, name: str) -> list:
    return [normalize(v) for v in df[name].tolist()]


# --------------------------------------------------------------------------------- client calls, one engine

DF_DDL = """
CREATE TABLE {table} (
    id UInt32,
    name String,
    kind LowCardinality(String),
    at DateTime64(3, 'UTC'),
    flag UInt8,
    big UInt64,
    score Float64,
    maybe_score Nullable(Float64),
    maybe_name Nullable(String),
    tags Array(String)
) ENGINE = MergeTree ORDER BY id
"""

DF_TYPES = [
    "UInt32",
    "String",
    "LowCardinality(String)",
    "DateTime64(3, 'UTC')",
    "UInt8",
    "UInt64",
    "Float64",
    "Nullable(Float64)",
    "Nullable(String)",
    "Array(String)",
]

AWKWARD = 'it\'s "quoted", a back\\slash, a tab\there, a newline\nand ünïcødé ✓'


def sample_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": np.array([1, 2, 3], dtype=np.uint32),
            "name": ["plain", AWKWARD, ""],
            "kind": ["open", "click", "open"],
            "at": pd.to_datetime(
                ["2024-01-02 03:04:05.678", "1999-12-31 23:59:59.999", "2038-01-19 03:14:08.001"], utc=True
            ).as_unit("ms"),
            "flag": np.array([0, 1, 255], dtype=np.uint8),
            "big": np.array([0, 2**32 + 7, 2**64 - 1], dtype=np.uint64),
            "score": [0.5, -1.25, 1e300],
            "maybe_score": pd.array([1.5, None, -3.0], dtype="Float64"),
            "maybe_name": pd.array(["x", None, "z'"], dtype=object),
            "tags": [["a", "b"], [], ["q'uote", "back\\slash", ""]],
        }
    )


def expected_rows(tz: dt.tzinfo | None = None) -> list[tuple]:
    """The sample rows as Python values; `query` returns DateTime64 as naive UTC (the client's default)."""
    return [
        (
            1,
            "plain",
            "open",
            dt.datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=tz),
            0,
            0,
            0.5,
            1.5,
            "x",
            ["a", "b"],
        ),
        (
            2,
            AWKWARD,
            "click",
            dt.datetime(1999, 12, 31, 23, 59, 59, 999000, tzinfo=tz),
            1,
            2**32 + 7,
            -1.25,
            None,
            None,
            [],
        ),
        (
            3,
            "",
            "open",
            dt.datetime(2038, 1, 19, 3, 14, 8, 1000, tzinfo=tz),
            255,
            2**64 - 1,
            1e300,
            -3.0,
            "z'",
            ["q'uote", "back\\slash", ""],
        ),
    ]


class TestClientCalls:
    def test_handshake_and_ping(self, endpoint):
        client = endpoint.client()
        try:
            assert client.server_version
            assert client.server_version == endpoint.server.engine.version
            assert client.command("SELECT 1") == 1
        finally:
            client.close()
        ping = httpx.get(f"{endpoint.url}/ping")
        assert ping.status_code == 200
        assert ping.text == "Ok.\n"

    def test_command_ddl(self, admin):
        table = unique("ddl")
        admin.command(f"CREATE TABLE {table} (a UInt32) ENGINE = MergeTree ORDER BY a")
        assert admin.command(f"EXISTS TABLE {table}") == 1
        admin.command(f"ALTER TABLE {table} ADD COLUMN b String DEFAULT 'x'")
        assert admin.query(f"SELECT * FROM {table}").column_names == ("a", "b")
        admin.command(f"DROP TABLE {table}")
        assert admin.command(f"EXISTS TABLE {table}") == 0

    def test_insert_df_query_df_round_trip(self, admin):
        table = unique("frames")
        admin.command(DF_DDL.format(table=table))
        frame = sample_frame()
        admin.insert_df(table, frame)
        back = admin.query_df(f"SELECT * FROM {table} ORDER BY id")
        assert list(back.columns) == list(frame.columns)
        assert len(back) == len(frame)
        for name in frame.columns:
            assert column_values(back, name) == column_values(frame, name), name
        # Same data through `query`: exact Python values and the declared types.
        result = admin.query(f"SELECT * FROM {table} ORDER BY id")
        assert [t.name for t in result.column_types] == DF_TYPES
        assert [normalize(list(r)) for r in result.result_rows] == [
            normalize(list(r)) for r in expected_rows()
        ]

    def test_insert_python_rows(self, admin):
        table = unique("rows")
        admin.command(DF_DDL.format(table=table))
        admin.insert(
            table, [list(r) for r in expected_rows(tz=UTC)], column_names=list(sample_frame().columns)
        )
        result = admin.query(f"SELECT * FROM {table} ORDER BY id")
        assert result.result_rows == expected_rows()
        assert result.column_names == tuple(sample_frame().columns)

    def test_query_arrow(self, admin):
        table = unique("arrow")
        admin.command(DF_DDL.format(table=table))
        admin.insert_df(table, sample_frame())
        arrow = admin.query_arrow(
            f"SELECT id, name, kind, at, big, maybe_score, tags FROM {table} ORDER BY id"
        )
        assert arrow.column_names == ["id", "name", "kind", "at", "big", "maybe_score", "tags"]
        assert arrow.num_rows == 3
        assert arrow.column("id").to_pylist() == [1, 2, 3]
        assert arrow.column("name").to_pylist() == ["plain", AWKWARD, ""]
        assert arrow.column("kind").to_pylist() == ["open", "click", "open"]
        assert [normalize(v) for v in arrow.column("at").to_pylist()] == [
            normalize(r[3]) for r in expected_rows()
        ]
        assert arrow.column("big").to_pylist() == [0, 2**32 + 7, 2**64 - 1]
        assert arrow.column("maybe_score").to_pylist() == [1.5, None, -3.0]
        assert arrow.column("tags").to_pylist() == [["a", "b"], [], ["q'uote", "back\\slash", ""]]

    def test_empty_result_has_names_and_types(self, admin):
        table = unique("empty")
        admin.command(DF_DDL.format(table=table))
        result = admin.query(f"SELECT * FROM {table}")
        assert result.result_rows == []
        assert result.column_names == tuple(sample_frame().columns)
        assert [t.name for t in result.column_types] == DF_TYPES

        filtered = admin.query(
            f"SELECT id, tags AS t FROM {table} WHERE id > {{x:UInt32}}", parameters={"x": 5}
        )
        assert filtered.result_rows == []
        assert filtered.column_names == ("id", "t")
        assert [t.name for t in filtered.column_types] == ["UInt32", "Array(String)"]

        with_cte = admin.query("WITH 1 AS one SELECT one, 'x' AS s WHERE 0")
        assert with_cte.column_names == ("one", "s")
        assert [t.name for t in with_cte.column_types] == ["UInt8", "String"]

        # SQL kept in files often starts with a comment; the result must still describe its columns.
        commented = admin.query(
            f"-- how many\n/* block\ncomment */ SELECT count() AS n, max(id) AS m FROM {table} "
            f"WHERE id = 99 GROUP BY kind"
        )
        assert commented.result_rows == []
        assert commented.column_names == ("n", "m")
        assert [t.name for t in commented.column_types] == ["UInt64", "UInt32"]

    def test_raw_query_formats(self, admin):
        table = unique("raw")
        admin.command(f"CREATE TABLE {table} (id UInt32, name String) ENGINE = MergeTree ORDER BY id")
        admin.insert(table, [[1, "one"], [2, "two"]], column_names=["id", "name"])

        as_json = json.loads(admin.raw_query(f"SELECT id, name FROM {table} ORDER BY id FORMAT JSON"))
        assert as_json["meta"] == [{"name": "id", "type": "UInt32"}, {"name": "name", "type": "String"}]
        assert as_json["data"] == [{"id": 1, "name": "one"}, {"id": 2, "name": "two"}]
        assert as_json["rows"] == 2

        each_row = admin.raw_query(f"SELECT id, name FROM {table} ORDER BY id FORMAT JSONEachRow")
        assert [json.loads(line) for line in each_row.decode().splitlines()] == [
            {"id": 1, "name": "one"},
            {"id": 2, "name": "two"},
        ]

        tsv = admin.raw_query(f"SELECT id, name FROM {table} ORDER BY id FORMAT TabSeparated")
        assert tsv == b"1\tone\n2\ttwo\n"

        empty_json = json.loads(admin.raw_query(f"SELECT id FROM {table} WHERE 0 FORMAT JSON"))
        assert empty_json["meta"] == [{"name": "id", "type": "UInt32"}]
        assert empty_json["data"] == []

    def test_server_side_parameters(self, endpoint, admin):
        table = unique("params")
        admin.command(f"CREATE TABLE {table} (id UInt32, name String) ENGINE = MergeTree ORDER BY id")
        admin.insert(table, [[1, "plain"], [2, AWKWARD], [3, "back\\slash"]], column_names=["id", "name"])
        tags = ["o'ne", "t\\wo", 'th"ree', ""]

        result = admin.query(
            f"SELECT {{x:UInt32}} AS x, {{s:String}} AS s, {{a:Array(String)}} AS a, "
            f"(SELECT id FROM {table} WHERE name = {{s:String}}) AS matched",
            parameters={"x": 4294967295, "s": AWKWARD, "a": tags},
        )
        assert result.result_rows == [(4294967295, AWKWARD, tags, 2)]
        assert [t.name for t in result.column_types] == [
            "UInt32",
            "String",
            "Array(String)",
            "Nullable(UInt32)",
        ]

        ids = admin.query(
            f"SELECT id FROM {table} WHERE name IN {{a:Array(String)}} ORDER BY id",
            parameters={"a": ["plain", "back\\slash"]},
        )
        assert ids.result_rows == [(1,), (3,)]

        # The values travelled as server-side parameters, not substituted into the SQL by the client.
        sent = [r for r in endpoint.requests if "param_s" in r.params and "{s:String}" in r.statement]
        assert sent and sent[0].params["param_x"] == "4294967295" and "param_a" in sent[0].params
        assert "{x:UInt32}" in sent[0].statement and "4294967295" not in sent[0].statement

    def test_per_query_settings_do_not_leak(self, admin):
        default_threads = admin.query("SELECT getSetting('max_threads')").result_rows[0][0]
        changed = int(default_threads) + 5
        with_setting = admin.query("SELECT getSetting('max_threads')", settings={"max_threads": changed})
        assert with_setting.result_rows[0][0] == changed
        # Every pooled engine connection serves some of these; none may keep the earlier request's setting.
        later = [
            admin.query("SELECT getSetting('max_threads')").result_rows[0][0] for _ in range(3 * POOL_SIZE)
        ]
        assert later == [default_threads] * len(later)

    def test_client_database(self, endpoint, admin):
        database = unique("db")
        admin.command(f"CREATE DATABASE {database}")
        scoped = endpoint.client(database=database)
        try:
            scoped.command("CREATE TABLE items (id UInt32) ENGINE = MergeTree ORDER BY id")
            scoped.insert("items", [[1], [2], [3]], column_names=["id"])
            assert scoped.command("SELECT count() FROM items") == 3
            assert scoped.command("SELECT currentDatabase()") == database
            assert admin.command(f"SELECT count() FROM {database}.items") == 3
            # A client without a database lands in `default` on every pooled connection, as on a server.
            bare = endpoint.client(database="")
            seen = {bare.command("SELECT currentDatabase()") for _ in range(3 * POOL_SIZE)}
            assert seen == {"default"}
            # Not there: chDB's `default` would look for a file of that name, which the engine user may not read.
            with pytest.raises(DatabaseError, match="Code: 497.*READ ON FILE"):
                bare.query("SELECT count() FROM items")
            bare.close()
        finally:
            scoped.close()

    @pytest.mark.parametrize("compression", ["lz4", "zstd", "gzip"])
    def test_compressed_inserts(self, endpoint, compression):
        client = endpoint.client(compress=compression)
        try:
            table = unique(f"compressed_{compression}")
            client.command(f"CREATE TABLE {table} (id UInt32, text String) ENGINE = MergeTree ORDER BY id")
            client.insert(table, [[i, f"row {i}"] for i in range(5000)], column_names=["id", "text"])
            # Big enough for clickhouse-connect to send several blocks, each compressed on its own.
            n = 300_000
            ids = np.arange(5000, 5000 + n, dtype=np.uint32)
            client.insert_df(table, pd.DataFrame({"id": ids, "text": [f"row {i}" for i in ids.tolist()]}))
            inserts = endpoint.inserts_into(table)
            assert len(inserts) == 2
            assert [r.headers.get("content-encoding") for r in inserts] == [compression, compression]
            total = 5000 + n
            assert client.query(f"SELECT count(), sum(id), uniqExact(text) FROM {table}").result_rows == [
                (total, total * (total - 1) // 2, total)
            ]
            back = client.query_df(f"SELECT id, text FROM {table} WHERE id % 1000 = 999 ORDER BY id")
            assert back["id"].tolist() == list(range(999, total, 1000))
            assert back["text"].iloc[-1] == f"row {total - 1}"
        finally:
            client.close()

    def test_big_chunked_insert(self, endpoint):
        client = endpoint.client(compress=False)
        try:
            table = unique("big")
            client.command(
                f"CREATE TABLE {table} (id UInt64, bucket UInt32, label String) "
                f"ENGINE = MergeTree ORDER BY id"
            )
            n = 300_000
            ids = np.arange(n, dtype=np.uint64)
            frame = pd.DataFrame(
                {
                    "id": ids,
                    "bucket": (ids % 97).astype(np.uint32),
                    "label": [f"label-{i % 1000}" for i in range(n)],
                }
            )
            client.insert_df(table, frame)
            inserts = endpoint.inserts_into(table)
            assert len(inserts) == 1
            assert inserts[0].headers.get("transfer-encoding", "").lower() == "chunked"
            assert "content-encoding" not in inserts[0].headers
            assert client.query(
                f"SELECT count(), sum(id), uniqExact(label), max(bucket) FROM {table}"
            ).result_rows == [(n, n * (n - 1) // 2, 1000, 96)]
        finally:
            client.close()

    def test_insert_with_sql_prepended_to_body(self, endpoint, admin):
        table = unique("plain_http")
        admin.command(f"CREATE TABLE {table} (a UInt32) ENGINE = MergeTree ORDER BY a")
        response = httpx.post(
            f"{endpoint.url}/", content=f"INSERT INTO {table} (a) FORMAT TabSeparated\n1\n2\n", auth=endpoint.auth,
            params={"database": TEST_DATABASE},
        )
        assert response.status_code == 200, response.text
        # curl style: statement in the URL, data in the body.
        response = httpx.post(
            f"{endpoint.url}/", params={"query": f"INSERT INTO {table} (a) FORMAT CSV", "database": TEST_DATABASE},
            content=b"3\n4\n",
            auth=endpoint.auth,
        )
        assert response.status_code == 200, response.text
        assert admin.query(f"SELECT a FROM {table} ORDER BY a").result_rows == [(1,), (2,), (3,), (4,)]

    def test_errors_carry_clickhouse_codes(self, endpoint, admin):
        missing = unique("missing")
        with pytest.raises(DatabaseError) as unknown:
            admin.query(f"SELECT * FROM {missing}")
        assert "Code: 60" in str(unknown.value)
        assert "UNKNOWN_TABLE" in str(unknown.value)
        with pytest.raises(DatabaseError) as unknown_cmd:
            admin.command(f"INSERT INTO {missing} VALUES (1)")
        assert "Code: 60" in str(unknown_cmd.value)
        with pytest.raises(DatabaseError) as syntax:
            admin.query("SELEC 1")
        assert "Code: 62" in str(syntax.value)
        assert "SYNTAX_ERROR" in str(syntax.value)

        response = httpx.get(f"{endpoint.url}/", auth=endpoint.auth,
                             params={"query": f"SELECT * FROM {missing}", "database": TEST_DATABASE})
        assert response.status_code != 200
        assert response.headers["X-ClickHouse-Exception-Code"] == "60"
        assert response.text.startswith("Code: 60.")
        response = httpx.post(f"{endpoint.url}/", content=b"SELEC 1", auth=endpoint.auth)
        assert response.status_code != 200
        assert response.headers["X-ClickHouse-Exception-Code"] == "62"
        # The endpoint is still healthy afterwards.
        assert admin.command("SELECT 42") == 42

    def test_insert_deduplication_token(self, admin):
        table = unique("dedup")
        admin.command(
            f"CREATE TABLE {table} (id UInt32, v String) ENGINE = MergeTree ORDER BY id "
            f"SETTINGS non_replicated_deduplication_window = 100"
        )
        token = {"insert_deduplication_token": unique("token")}
        admin.insert(table, [[1, "a"], [2, "b"]], column_names=["id", "v"], settings=token)
        admin.insert(table, [[1, "a"], [2, "b"]], column_names=["id", "v"], settings=token)
        assert admin.query(f"SELECT id, v FROM {table} ORDER BY id").result_rows == [(1, "a"), (2, "b")]
        # The token decides, not the data: different rows under the same token are a duplicate too.
        admin.insert(table, [[3, "c"]], column_names=["id", "v"], settings=token)
        assert admin.command(f"SELECT count() FROM {table}") == 2
        # Later inserts without the token are not dropped by a token left behind on a pooled connection.
        for i in range(3 * POOL_SIZE):
            admin.insert(table, [[100 + i, f"later {i}"]], column_names=["id", "v"])
        assert admin.command(f"SELECT count() FROM {table}") == 2 + 3 * POOL_SIZE


# ---------------------------------------------------------------------------------------------- concurrency

WORKER = r"""
import json, sys, time
import clickhouse_connect

host, port, table = sys.argv[1], int(sys.argv[2]), sys.argv[3]
worker, batches, rows = map(int, sys.argv[4:7])
client = clickhouse_connect.get_client(host=host, port=port, username=sys.argv[7], database=sys.argv[8],
                                       password=sys.stdin.readline().strip())
print("ready", flush=True)
sys.stdin.readline()
started = time.monotonic()  # CLOCK_MONOTONIC is system-wide: comparable across processes
mismatches = []
for batch in range(batches):
    base = (worker * batches + batch) * rows
    client.insert(table, [[worker, base + i, f"w{worker}-{base + i}"] for i in range(rows)],
                  column_names=["worker", "id", "payload"])
    mine = client.query(f"SELECT count() FROM {table} WHERE worker = {{w:UInt32}}", parameters={"w": worker})
    if mine.result_rows[0][0] != (batch + 1) * rows:
        mismatches.append([batch, mine.result_rows[0][0]])
    client.query_df(f"SELECT worker, count() FROM {table} GROUP BY worker")
report = {"worker": worker, "mismatches": mismatches, "started": started, "ended": time.monotonic()}
print(json.dumps(report), flush=True)
"""

LOAD_DDL = (
    "CREATE TABLE {table} (worker UInt32, id UInt64, payload String) ENGINE = MergeTree ORDER BY (worker, id)"
)


class TestConcurrency:
    def test_many_processes_insert_and_query_at_once(self, endpoint, admin):
        table = unique("procs")
        admin.command(LOAD_DDL.format(table=table))
        workers, batches, rows = 4, 10, 400
        argv = [sys.executable, "-c", WORKER, HOST, str(endpoint.port), table]
        pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
        user, password = endpoint.auth
        procs = [subprocess.Popen([*argv, str(w), str(batches), str(rows), user, TEST_DATABASE], **pipes)
                 for w in range(workers)]
        try:
            for proc in procs:  # the password on stdin, never in a command line
                proc.stdin.write(password + "\n")
                proc.stdin.flush()
            for proc in procs:
                assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
            for proc in procs:  # release them together
                proc.stdin.write("go\n")
                proc.stdin.flush()
            reports = []
            for proc in procs:
                out, err = proc.communicate(timeout=90)
                assert proc.returncode == 0, err
                reports.append(json.loads(out.strip().splitlines()[-1]))
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
        assert sorted(r["worker"] for r in reports) == list(range(workers))
        assert all(r["mismatches"] == [] for r in reports), reports
        # They really ran at the same time: every worker started before any of them finished.
        assert max(r["started"] for r in reports) < min(r["ended"] for r in reports)
        total = workers * batches * rows
        assert admin.query(f"SELECT count(), uniqExact(id), min(id), max(id) FROM {table}").result_rows == [
            (total, total, 0, total - 1)
        ]
        per_worker = admin.query(f"SELECT worker, count() FROM {table} GROUP BY worker ORDER BY worker")
        assert per_worker.result_rows == [(w, batches * rows) for w in range(workers)]

    def test_many_threads_insert_and_query_at_once(self, endpoint, admin):
        table = unique("threads")
        admin.command(LOAD_DDL.format(table=table))
        threads, batches, rows = 8, 12, 250
        start = threading.Barrier(threads)

        def work(worker: int) -> list:
            client = endpoint.client()  # one client per thread, as clickhouse-connect requires
            try:
                start.wait(timeout=30)
                mismatches = []
                for batch in range(batches):
                    base = (worker * batches + batch) * rows
                    client.insert(
                        table,
                        [[worker, base + i, f"t{worker}"] for i in range(rows)],
                        column_names=["worker", "id", "payload"],
                    )
                    mine = client.command(f"SELECT count() FROM {table} WHERE worker = {worker}")
                    if mine != (batch + 1) * rows:
                        mismatches.append((batch, mine))
                    client.query_arrow(f"SELECT worker, count() AS n FROM {table} GROUP BY worker")
                return mismatches
            finally:
                client.close()

        with ThreadPoolExecutor(max_workers=threads) as pool:
            results = list(pool.map(work, range(threads), timeout=90))
        assert results == [[]] * threads
        total = threads * batches * rows
        assert admin.query(f"SELECT count(), uniqExact(id) FROM {table}").result_rows == [(total, total)]

    def test_slow_query_does_not_block_point_query(self, endpoint, admin):
        table = unique("point")
        admin.command(f"CREATE TABLE {table} (id UInt32, v String) ENGINE = MergeTree ORDER BY id")
        admin.insert(table, [[i, f"v{i}"] for i in range(1000)], column_names=["id", "v"])
        marker = unique("slow_marker")
        slow_sql = f"SELECT sum(cityHash64(number)) AS {marker} FROM numbers(600000000)"
        running_sql = (
            f"SELECT count() FROM system.processes WHERE query LIKE '%{marker}%' "
            f"AND query NOT LIKE '%system.processes%'"
        )
        marks: dict[str, float] = {}
        outcome: dict[str, object] = {}
        slow_done = threading.Event()
        slow_client, point_client = endpoint.client(), endpoint.client()

        def run_slow() -> None:
            try:
                outcome["rows"] = slow_client.query(slow_sql).result_rows
            except Exception as exc:  # reported by the assertions below
                outcome["error"] = exc
            finally:
                marks["slow_done"] = time.monotonic()
                slow_done.set()

        slow = threading.Thread(target=run_slow, daemon=True)
        try:
            slow.start()
            # Wait until the engine is actually executing the slow query.
            while admin.command(running_sql) != 1:
                assert not slow_done.is_set(), f"slow query ended before it was seen running: {outcome}"
                time.sleep(0.01)
            marks["point_sent"] = time.monotonic()
            point = point_client.query(
                f"SELECT v FROM {table} WHERE id = {{id:UInt32}}", parameters={"id": 421}
            )
            marks["point_done"] = time.monotonic()
            still_running = admin.command(running_sql)
            assert point.result_rows == [("v421",)]
            assert still_running == 1, "the slow query had already finished: the point query waited for it"
            assert slow_done.wait(timeout=120)
        finally:
            slow.join(timeout=120)
            slow_client.close()
            point_client.close()
        assert "error" not in outcome, outcome
        assert len(outcome["rows"]) == 1
        assert marks["point_done"] < marks["slow_done"]


# ------------------------------------------------------------------------------------------------ lifecycle

SERVE = (
    "from sendflowr.local.chdb_server import serve_forever; from sendflowr.settings import Settings; "
    "serve_forever(Settings())"
)


def serve_in_subprocess(settings: Settings, log: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "SENDFLOWR_HOME": str(settings.home),
        "SENDFLOWR_CHDB_PATH": str(settings.chdb_data_dir),
        "SENDFLOWR_CLICKHOUSE_URL": settings.clickhouse_url,
    }
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", SERVE], env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while not chdb_server.ping(settings):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"endpoint subprocess did not come up:\n{log.read_text(errors='replace')}")
        time.sleep(0.1)
    return proc


class TestLifecycle:
    def test_data_dir_held_by_another_process(self, tmp_path):
        settings = make_settings(tmp_path, free_port())
        proc = serve_in_subprocess(settings, tmp_path / "serve.log")
        try:
            client = get_client(settings, with_database=False)
            client.command(f"CREATE DATABASE {TEST_DATABASE}")
            client.command(f"CREATE TABLE {TEST_DATABASE}.kept (id UInt32) ENGINE = MergeTree ORDER BY id")
            client.insert("kept", [[i] for i in range(10)], column_names=["id"], database=TEST_DATABASE)

            with pytest.raises(SendflowrError) as err:
                open_server(settings, host=HOST, port=0)
            message = str(err.value)
            assert str(settings.chdb_data_dir) in message
            assert "Another process owns" in message  # the actionable hint, not only the engine's text

            assert client.command(f"SELECT count() FROM {TEST_DATABASE}.kept") == 10  # the owner is unaffected
            client.close()
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            finally:
                if proc.poll() is None:
                    proc.kill()
        assert proc.returncode == 0, (tmp_path / "serve.log").read_text(errors="replace")
        assert "chDB endpoint stopped" in (tmp_path / "serve.log").read_text(errors="replace")

        # Once the owner stopped, this process may open the directory, and the data written there is kept.
        assert_kept(settings, [(10, 45)])

    def test_start_background_and_stop(self, tmp_path):
        settings = make_settings(tmp_path, free_port())
        pid = chdb_server.start_background(settings, timeout=60)
        try:
            assert chdb_server.ping(settings)
            client = get_client(settings, with_database=False)
            client.command(f"CREATE DATABASE {TEST_DATABASE}")
            client.command(f"CREATE TABLE {TEST_DATABASE}.kept (id UInt32) ENGINE = MergeTree ORDER BY id")
            client.insert("kept", [[1], [2], [3]], column_names=["id"], database=TEST_DATABASE)
            client.close()
            assert chdb_server.start_background(settings) == pid  # already up: the same process, not a second
        finally:
            stopped = processes.stop(settings, chdb_server.PROCESS_NAME)
        assert stopped
        assert not chdb_server.ping(settings, timeout=0.5)
        assert "chDB endpoint stopped" in processes.log_tail(processes.log_file(settings, "clickhouse"))

        assert_kept(settings, [(3, 6)])  # the stopped process released the directory and flushed its data

    def test_port_in_use_is_named(self, tmp_path):
        settings = make_settings(tmp_path / "a")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
            listener.bind((HOST, 0))
            listener.listen(1)
            port = listener.getsockname()[1]
            with pytest.raises(SendflowrError, match=rf"\b{port}\b") as err:
                open_server(settings, host=HOST, port=port)
            assert "in use" in str(err.value)

        # Bound, not listening: the pre-check passes, the bind itself fails; the engine must be released.
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
            holder.bind((HOST, 0))
            port = holder.getsockname()[1]
            with pytest.raises(SendflowrError, match=rf"\b{port}\b"):
                open_server(settings, host=HOST, port=port)
        other = start_endpoint(make_settings(tmp_path / "b"))  # fails if the first engine were still open
        try:
            client = other.client()
            assert client.command("SELECT 1") == 1
            client.close()
        finally:
            other.stop()

    def test_restart_in_process_keeps_data(self, tmp_path):
        settings = make_settings(tmp_path)
        first = start_endpoint(settings)
        try:
            client = first.client()
            client.command("CREATE TABLE kept (id UInt32, name String) ENGINE = MergeTree ORDER BY id")
            client.insert("kept", [[i, f"n{i}"] for i in range(100)], column_names=["id", "name"])
            client.close()
        finally:
            first.stop()
        assert not chdb_server.ping(make_settings(tmp_path, first.port), timeout=0.5)

        second = start_endpoint(settings)
        try:
            client = second.client()
            assert client.query("SELECT count(), sum(id), max(name) FROM kept").result_rows == [
                (100, 4950, "n99")
            ]
            client.close()
        finally:
            second.stop()
