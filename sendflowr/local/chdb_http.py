"""Translate ClickHouse HTTP-interface requests into chDB calls, and chDB results back into responses.

Only what the stock clickhouse-connect client and curl use is covered: queries in any output format
(Native, JSON, TSV, ...), inserts with a data body (Native and any other input format), server-side
`{name:Type}` parameters, per-request settings, `database`, compressed request bodies, and errors
carrying ClickHouse's own code and message. Sessions and temporary tables are not supported: every
request may land on a different engine connection.

Two pools of connections share the engine: the writer's, and the reader's, opened with readonly=1 (which a
request can neither lift nor change). Every statement is vetted by `chdb_guard` on the connection that then
runs it; the engine itself runs with the grants and constraints of `chdb_access`.
"""

from __future__ import annotations

import json
import os
import queue
import re
import tempfile
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import chdb

from sendflowr.local.chdb_errors import ClickHouseError
from sendflowr.local.chdb_guard import QueryGuard

# Query text (the statement, with inline INSERT data) the endpoint vets at most; data belongs in the body.
MAX_STATEMENT_BYTES = 4 << 20
# URL parameters that steer the transport, not the query; everything else is a ClickHouse setting.
TRANSPORT_PARAMS = frozenset({
    "query", "database", "default_format", "query_id", "session_id", "session_timeout", "session_check",
    "compress", "decompress", "user", "password", "quota_key", "buffer_size", "wait_end_of_query",
    "client_protocol_version", "role", "send_progress_in_http_headers", "http_headers_progress_interval_ms",
    "enable_http_compression", "http_zlib_compression_level", "query_kind", "default_session_timeout",
})

_TRAILING_FORMAT = re.compile(r"\bFORMAT\s+([A-Za-z0-9_]+)\s*;?\s*$", re.IGNORECASE)
_INSERT_WITH_FORMAT = re.compile(rb"^\s*INSERT\s+INTO\s.*?\bFORMAT\s+([A-Za-z0-9_]+)[ \t]*(?:\r?\n|$)",
                                 re.IGNORECASE | re.DOTALL)
_IS_INSERT = re.compile(r"^\s*INSERT\s+INTO\b", re.IGNORECASE)
_LEADING_COMMENTS = r"^\s*(?:(?:--[^\n]*(?:\n|$)|/\*.*?\*/)\s*)*(?:\(\s*)*"
_IS_SELECT = re.compile(_LEADING_COMMENTS + r"(SELECT|WITH)\b", re.IGNORECASE | re.DOTALL)
_PRODUCES_RESULT = re.compile(_LEADING_COMMENTS + r"(SELECT|WITH|SHOW|DESC|DESCRIBE|EXISTS|EXPLAIN|CHECK)\b",
                              re.IGNORECASE | re.DOTALL)
_SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

_CONTENT_TYPES = {
    "Native": "application/octet-stream",
    "RowBinary": "application/octet-stream",
    "RowBinaryWithNamesAndTypes": "application/octet-stream",
    "Arrow": "application/octet-stream",
    "ArrowStream": "application/octet-stream",
    "Parquet": "application/octet-stream",
    "JSON": "application/json; charset=UTF-8",
    "JSONCompact": "application/json; charset=UTF-8",
    "JSONEachRow": "application/x-ndjson; charset=UTF-8",
    "CSV": "text/csv; charset=UTF-8; header=absent",
}
@dataclass
class QueryResult:
    body: bytes
    fmt: str | None  # None for statements without a result set (DDL, INSERT), as a server reports them
    summary: dict[str, str]


@dataclass
class _EngineConnection:
    conn: Any
    database: str | None = None
    settings: dict[str, str] = field(default_factory=dict)
    # What a request that names no database / no setting gets: the connection's state when it was opened.
    default_database: str = "default"
    baseline: dict[str, str] = field(default_factory=dict)

    @classmethod
    def open(cls, data_dir: Path, config: Path, readonly: bool) -> _EngineConnection:
        # The configuration shapes the engine when its first connection opens; readonly=1 is per connection.
        conn = chdb.connect(f"{data_dir}?config-file={config}" + ("&readonly=1" if readonly else ""))
        database = conn.query("SELECT currentDatabase()", "TabSeparated").bytes().decode().strip()
        changed = conn.query("SELECT name, value FROM system.settings WHERE changed", "JSONCompact").bytes()
        baseline = {name: value for name, value in json.loads(changed)["data"]}
        return cls(conn, database=database, default_database=database, baseline=baseline)


def _too_large(limit: int) -> ClickHouseError:
    return ClickHouseError(f"Request body is larger than {limit} bytes once decompressed", code=1002, status=413)


def _inflate(decompressor: Any, body: bytes, limit: int) -> bytes:
    # Bounded: a few KiB of a compressed bomb must not become gigabytes in memory.
    out = decompressor.decompress(body, limit + 1)
    if len(out) > limit or decompressor.unconsumed_tail:
        raise _too_large(limit)
    if not decompressor.eof:
        raise ClickHouseError("truncated compressed request body", code=271, status=400)
    return out


def _frames(decompressor: Callable[[], Any], body: bytes, limit: int) -> bytes:
    out, rest = bytearray(), body
    while rest:
        frame = decompressor()
        out += frame.decompress(rest, max_length=limit + 1 - len(out))
        if len(out) > limit:
            raise _too_large(limit)
        if not frame.eof:
            raise ClickHouseError("truncated compressed request body", code=271, status=400)
        rest = frame.unused_data
    return bytes(out)


def decode_body(body: bytes, encoding: str | None, limit: int = 1 << 30) -> bytes:
    """The request body without its Content-Encoding, at most `limit` bytes (413 above, 400 when corrupt)."""
    if not encoding or encoding == "identity" or not body:
        return body
    encoding = encoding.strip().lower()
    try:
        if encoding == "lz4":
            import lz4.frame

            # clickhouse-connect compresses each Native block as its own frame; decode every frame, not the first.
            return _frames(lambda: lz4.frame.LZ4FrameDecompressor(), body, limit)
        if encoding == "zstd":
            try:
                from compression import zstd  # Python >= 3.14
            except ImportError:
                from backports import zstd
            return _frames(zstd.ZstdDecompressor, body, limit)
        if encoding in ("gzip", "x-gzip"):
            return _inflate(zlib.decompressobj(16 + zlib.MAX_WBITS), body, limit)
        if encoding == "deflate":
            return _inflate(zlib.decompressobj(), body, limit)
    except ClickHouseError:
        raise
    except Exception as exc:  # corrupt input: the request is at fault
        raise ClickHouseError(f"Cannot decompress the {encoding} request body: {exc}", code=271, status=400) from None
    raise ClickHouseError(f"Unknown Content-Encoding {encoding!r}", code=73, status=400)


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ClickHouseError(f"Query is not valid UTF-8: {exc}", code=62, status=400) from None


def split_insert_body(sql: str, body: bytes) -> tuple[str, bytes]:
    """Return (statement, data). Data arrives after the SQL in the query string or in the body itself.
    The split only routes bytes: the statement is vetted on the engine's parse tree afterwards."""
    statement, data = _split(sql, body)
    if len(statement) > MAX_STATEMENT_BYTES:
        raise ClickHouseError(f"Query text of {len(statement)} characters is over {MAX_STATEMENT_BYTES}: send INSERT "
                              "data in the request body after `INSERT INTO ... FORMAT <format>` (QUERY_IS_TOO_LARGE)",
                              code=202, status=413)
    return statement, data


def _split(sql: str, body: bytes) -> tuple[str, bytes]:
    if sql:
        if not body:
            return sql, b""
        if _IS_INSERT.match(sql) and _TRAILING_FORMAT.search(sql):
            return sql, body
        return f"{sql}\n{_text(body)}", b""
    head = _INSERT_WITH_FORMAT.match(body[:1_048_576])
    if head:
        return _text(body[: head.end()]).strip(), body[head.end():]
    return _text(body), b""


def output_format(sql: str, default_format: str | None) -> str:
    match = _TRAILING_FORMAT.search(sql)
    if match:
        return match.group(1)
    return default_format or "TabSeparated"


def _write_varint(value: int, out: bytearray) -> None:
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return


def native_header_block(columns: list[tuple[str, str]]) -> bytes:
    """A Native block with names and types and zero rows, as a server sends for an empty result."""
    out = bytearray()
    _write_varint(len(columns), out)
    _write_varint(0, out)
    for name, type_name in columns:
        for text in (name, type_name):
            raw = text.encode("utf-8")
            _write_varint(len(raw), out)
            out += raw
    return bytes(out)


class ChdbEngine:
    """A small pool of chDB connections to one data directory, shared by the HTTP handler threads.

    chDB connections to the same path share one engine; queries on different connections run in
    parallel, so a long aggregation does not stall point lookups.
    """

    def __init__(self, data_dir: Path, pool_size: int, config: Path):
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._pools: dict[bool, queue.Queue[_EngineConnection]] = {False: queue.Queue(), True: queue.Queue()}
        self._spool_dir = Path(tempfile.mkdtemp(prefix="sendflowr-chdb-inserts-"))
        self.guard = QueryGuard()
        try:
            for readonly in (False, True):  # a writer first: the engine starts with no per-connection readonly
                for _ in range(pool_size):
                    self._pools[readonly].put(_EngineConnection.open(self.data_dir, config, readonly))
        except Exception as exc:
            self.close()
            raise ClickHouseError(str(exc)) from exc
        with self._connection(False) as engine:
            row = engine.conn.query("SELECT version(), timezone()", "TabSeparated").bytes().decode().split("\t")
        self.version, self.timezone = row[0].strip(), row[1].strip()
        self._closed = threading.Event()

    @contextmanager
    def _connection(self, readonly: bool) -> Iterator[_EngineConnection]:
        pool = self._pools[readonly]
        engine = pool.get()
        try:
            yield engine
        finally:
            pool.put(engine)

    def close(self) -> None:
        for pool in self._pools.values():
            while not pool.empty():
                engine = pool.get_nowait()
                try:
                    engine.conn.close()
                except Exception:
                    pass
        for leftover in self._spool_dir.glob("*"):
            leftover.unlink(missing_ok=True)
        self._spool_dir.rmdir()

    def _prepare(self, engine: _EngineConnection, database: str | None, settings: dict[str, str]) -> None:
        database = database or engine.default_database
        if database != engine.database:
            if not _SETTING_NAME.match(database):
                raise ClickHouseError(f"Database name {database!r} is not supported here", code=81)
            engine.conn.query(f"USE `{database}`")
            engine.database = database
        # Settings an earlier request changed on this pooled connection go back to the engine's own.
        for name in [name for name in engine.settings if name not in settings]:
            if name in engine.baseline:
                quoted = engine.baseline[name].replace("\\", "\\\\").replace("'", "\\'")
                engine.conn.query(f"SET {name} = '{quoted}'")
            else:
                engine.conn.query(f"SET {name} = DEFAULT")
            del engine.settings[name]
        for name, value in settings.items():
            if engine.settings.get(name) == value:
                continue
            if not _SETTING_NAME.match(name):
                raise ClickHouseError(f"Unknown setting {name!r}", code=115)
            quoted = value.replace("\\", "\\\\").replace("'", "\\'")
            engine.conn.query(f"SET {name} = '{quoted}'")
            engine.settings[name] = value

    def execute(self, sql: str, data: bytes, default_format: str | None, database: str | None,
                settings: dict[str, str], params: dict[str, str], readonly: bool = False) -> QueryResult:
        """Run one client statement. `readonly`: the reader's pool (the reader user, GET requests); a request
        asking for readonly >= 1 goes there too, so it never changes a writer connection for good."""
        if settings.get("readonly", "0") != "0":
            readonly = True
            settings = {k: v for k, v in settings.items() if k != "readonly"}
        started = time.perf_counter_ns()
        spool: Path | None = None
        try:
            with self._connection(readonly) as engine:
                try:
                    self._prepare(engine, database, settings)
                    vetted = self.guard.vet(lambda q, p, f: engine.conn.query(q, f, params=p).bytes(), sql,
                                            bool(data))
                    sql, data = vetted.sql, data or vetted.data or b""
                    fmt = output_format(sql, default_format)
                    if data:
                        spool, sql = self._spool(sql, data, vetted.insert_format)
                        fmt = "TabSeparated"
                    result = engine.conn.query(sql, fmt, params=params)
                    body = result.bytes()
                    if not body and fmt == "Native" and _IS_SELECT.match(sql):
                        body = native_header_block(self._describe(engine, sql, params))
                except ClickHouseError:
                    raise
                except Exception as exc:
                    raise ClickHouseError(str(exc)) from exc
        finally:
            if spool is not None:
                spool.unlink(missing_ok=True)
        elapsed = time.perf_counter_ns() - started
        summary = {
            "read_rows": str(result.rows_read()),
            "read_bytes": str(result.bytes_read()),
            "written_rows": str(result.rows_written()),
            "written_bytes": str(result.bytes_written()),
            "total_rows_to_read": "0",
            "result_rows": "0" if data else str(result.rows_read()),
            "result_bytes": str(len(body)),
            "elapsed_ns": str(elapsed),
        }
        produces_result = not data and bool(_PRODUCES_RESULT.match(sql))
        return QueryResult(body=body, fmt=fmt if produces_result else None, summary=summary)

    def _spool(self, sql: str, data: bytes, insert_format: str | None) -> tuple[Path, str]:
        """Write INSERT data to a private file and point the (vetted) statement at it with FROM INFILE."""
        match = _TRAILING_FORMAT.search(sql)
        if not match or match.group(1) != insert_format:
            raise ClickHouseError("INSERT with a data body must end with its FORMAT clause", code=62, status=400)
        spool = self._spool_dir / f"{uuid.uuid4().hex}.{match.group(1)}"
        spool.write_bytes(data)
        return spool, f"{sql[: match.start()]} FROM INFILE '{spool}' {sql[match.start():]}"

    @staticmethod
    def _describe(engine: _EngineConnection, sql: str, params: dict[str, str]) -> list[tuple[str, str]]:
        # chDB answers an empty Native result with zero bytes; a server sends names and types.
        inner = _TRAILING_FORMAT.sub("", sql).rstrip().rstrip(";")
        described = engine.conn.query(f"DESCRIBE ({inner})", "JSONCompact", params=params).bytes()
        return [(row[0], row[1]) for row in json.loads(described)["data"]]


def summary_header(summary: dict[str, str]) -> str:
    return json.dumps(summary, separators=(",", ":"))


def default_pool_size() -> int:
    return max(2, min(8, (os.cpu_count() or 2) * 2))
