"""Translate ClickHouse HTTP-interface requests into chDB calls, and chDB results back into responses.

Only what the stock clickhouse-connect client and curl use is covered: queries in any output format
(Native, JSON, TSV, ...), inserts with a data body (Native and any other input format), server-side
`{name:Type}` parameters, per-request settings, `database`, compressed request bodies, and errors
carrying ClickHouse's own code and message. Sessions and temporary tables are not supported: every
request may land on a different engine connection.
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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import chdb

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
_ERROR_CODE = re.compile(r"Code:\s*(\d+)")
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
_HTTP_STATUS_FOR_CODE = {62: 400, 27: 400, 26: 400, 36: 400, 47: 400, 60: 404, 81: 404, 516: 401, 497: 403}


class ClickHouseError(Exception):
    """An engine error with ClickHouse's own code, so clients see exactly what a server would send."""

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        match = _ERROR_CODE.search(message)
        self.code = code if code is not None else (int(match.group(1)) if match else 1002)
        self.message = message if message.startswith("Code:") else f"Code: {self.code}. DB::Exception: {message}"

    @property
    def http_status(self) -> int:
        return _HTTP_STATUS_FOR_CODE.get(self.code, 500)


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
    def open(cls, data_dir: Path, config: Path | None = None) -> _EngineConnection:
        conn = chdb.connect(f"{data_dir}?config-file={config}" if config else str(data_dir))
        database = conn.query("SELECT currentDatabase()", "TabSeparated").bytes().decode().strip()
        changed = conn.query("SELECT name, value FROM system.settings WHERE changed", "JSONCompact").bytes()
        baseline = {name: value for name, value in json.loads(changed)["data"]}
        return cls(conn, database=database, default_database=database, baseline=baseline)


def decode_body(body: bytes, encoding: str | None) -> bytes:
    if not encoding or encoding == "identity" or not body:
        return body
    encoding = encoding.strip().lower()
    if encoding == "lz4":
        import lz4.frame

        # clickhouse-connect compresses each Native block as its own frame; decode every frame, not the first.
        out, rest = bytearray(), body
        while rest:
            frame = lz4.frame.LZ4FrameDecompressor()
            out += frame.decompress(rest)
            rest = frame.unused_data
        return bytes(out)
    if encoding == "zstd":
        try:
            from compression import zstd  # Python >= 3.14
        except ImportError:
            from backports import zstd
        return zstd.decompress(body)
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompress(body, 16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompress(body)
    if encoding == "br":
        import brotli

        return brotli.decompress(body)
    raise ClickHouseError(f"Unknown Content-Encoding {encoding!r}", code=73)


def split_insert_body(sql: str, body: bytes) -> tuple[str, bytes]:
    """Return (statement, data). Data arrives after the SQL in the query string or in the body itself."""
    if sql:
        if not body:
            return sql, b""
        if _IS_INSERT.match(sql) and _TRAILING_FORMAT.search(sql):
            return sql, body
        return f"{sql}\n{body.decode('utf-8')}", b""
    head = _INSERT_WITH_FORMAT.match(body[:1_048_576])
    if head:
        return body[: head.end()].decode("utf-8").strip(), body[head.end():]
    return body.decode("utf-8"), b""


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

    def __init__(self, data_dir: Path, pool_size: int = 4, config: Path | None = None):
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._pool: queue.Queue[_EngineConnection] = queue.Queue()
        self._spool_dir = Path(tempfile.mkdtemp(prefix="sendflowr-chdb-inserts-"))
        try:
            for _ in range(pool_size):
                self._pool.put(_EngineConnection.open(self.data_dir, config))
        except Exception as exc:
            raise ClickHouseError(str(exc)) from exc
        with self._connection() as engine:
            row = engine.conn.query("SELECT version(), timezone()", "TabSeparated").bytes().decode().split("\t")
        self.version, self.timezone = row[0].strip(), row[1].strip()
        self._closed = threading.Event()

    @contextmanager
    def _connection(self) -> Iterator[_EngineConnection]:
        engine = self._pool.get()
        try:
            yield engine
        finally:
            self._pool.put(engine)

    def close(self) -> None:
        self._closed.set()
        while not self._pool.empty():
            engine = self._pool.get_nowait()
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
                settings: dict[str, str], params: dict[str, str]) -> QueryResult:
        fmt = output_format(sql, default_format)
        started = time.perf_counter_ns()
        spool: Path | None = None
        if data:
            match = _TRAILING_FORMAT.search(sql)
            if not match:
                raise ClickHouseError("INSERT with a data body needs a FORMAT clause", code=62)
            spool = self._spool_dir / f"{uuid.uuid4().hex}.{match.group(1)}"
            spool.write_bytes(data)
            sql = f"{sql[: match.start()]} FROM INFILE '{spool}' {sql[match.start():]}"
            fmt = "TabSeparated"
        try:
            with self._connection() as engine:
                try:
                    self._prepare(engine, database, settings)
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
