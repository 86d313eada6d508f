"""The one process that owns the embedded chDB engine and serves ClickHouse's HTTP interface.

Only one process may open a chDB data directory, while Dagster's webserver, daemon and runs and the
API are separate processes. They all reach this endpoint with the stock clickhouse-connect HTTP
client, exactly as they would reach a ClickHouse server.
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from sendflowr.errors import SendflowrError
from sendflowr.local import processes
from sendflowr.local.chdb_http import (
    _CONTENT_TYPES,
    TRANSPORT_PARAMS,
    ChdbEngine,
    ClickHouseError,
    decode_body,
    default_pool_size,
    split_insert_body,
    summary_header,
)
from sendflowr.settings import Settings

PROCESS_NAME = "clickhouse"
MAX_BODY_BYTES = 1 << 30
_QUICKACK = getattr(socket, "TCP_QUICKACK", None)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ChdbHttpServer

    def setup(self) -> None:
        super().setup()
        # Without TCP_NODELAY a small response waits ~40 ms for the client's delayed ACK.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def handle_one_request(self) -> None:
        # Clients send headers and body in two writes; ACK at once so their Nagle does not hold the body.
        if _QUICKACK is not None:
            try:
                self.connection.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
            except OSError:
                pass
        super().handle_one_request()

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
        if self.server.verbose:
            super().log_message(format, *args)

    def do_GET(self) -> None:
        self._handle(body=b"")

    def do_POST(self) -> None:
        try:
            body = self._read_body()
        except ClickHouseError as exc:
            self._send_error(exc)
            return
        self._handle(body)

    def do_HEAD(self) -> None:
        self._send(200, b"", {"Content-Type": "text/plain; charset=UTF-8"}, head_only=True)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks, total = [], 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                total += size
                if total > MAX_BODY_BYTES:
                    raise ClickHouseError("Request body too large", code=1002)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            raw = b"".join(chunks)
        else:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                raise ClickHouseError("Request body too large", code=1002)
            raw = self.rfile.read(length) if length else b""
        return decode_body(raw, self.headers.get("Content-Encoding"))

    def _handle(self, body: bytes) -> None:
        url = urlsplit(self.path)
        if url.path.rstrip("/") in ("/ping", "/replicas_status") or (url.path == "/" and not url.query
                                                                       and not body):
            self._send(200, b"Ok.\n", {"Content-Type": "text/plain; charset=UTF-8"})
            return
        if url.path not in ("/", ""):
            self._send_error(ClickHouseError(f"There is no handle {url.path}", code=1002), status=404)
            return
        params = dict(parse_qsl(url.query, keep_blank_values=True))
        query_id = params.get("query_id") or self.headers.get("X-ClickHouse-Query-Id") or ""
        database = params.get("database") or self.headers.get("X-ClickHouse-Database")
        try:
            sql, data = split_insert_body(params.get("query", ""), body)
            if not sql.strip():
                raise ClickHouseError("Empty query", code=62)
            bind = {k[6:]: v for k, v in params.items() if k.startswith("param_")}
            settings = {k: v for k, v in params.items() if k not in TRANSPORT_PARAMS and not k.startswith("param_")}
            result = self.server.engine.execute(sql, data, params.get("default_format"), database, settings, bind)
        except ClickHouseError as exc:
            self._send_error(exc, query_id=query_id)
            return
        headers = {
            "Content-Type": _CONTENT_TYPES.get(result.fmt or "", "text/tab-separated-values; charset=UTF-8"),
            "X-ClickHouse-Query-Id": query_id,
            "X-ClickHouse-Summary": summary_header(result.summary),
        }
        if result.fmt:
            headers["X-ClickHouse-Format"] = result.fmt
        self._send(200, result.body, headers)

    def _send_error(self, exc: ClickHouseError, status: int | None = None, query_id: str = "") -> None:
        body = f"{exc.message} (version {self.server.engine.version})\n".encode()
        self._send(status or exc.http_status, body, {
            "Content-Type": "text/plain; charset=UTF-8",
            "X-ClickHouse-Exception-Code": str(exc.code),
            "X-ClickHouse-Query-Id": query_id,
        })

    def _send(self, status: int, body: bytes, headers: dict[str, str], head_only: bool = False) -> None:
        # One write for status, headers and body: separate small writes stall on Nagle + delayed ACK.
        lines = [f"HTTP/1.1 {status} {self.responses.get(status, ('',))[0]}",
                 f"Content-Length: {len(body)}",
                 "Connection: keep-alive",
                 "X-ClickHouse-Server-Display-Name: sendflowr-chdb",
                 f"X-ClickHouse-Timezone: {self.server.engine.timezone}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        payload = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.wfile.write(payload if head_only else payload + body)


class ChdbHttpServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, engine: ChdbEngine, host: str, port: int, verbose: bool = False):
        self.engine = engine
        self.verbose = verbose
        super().__init__((host, port), _Handler)


def engine_config(settings: Settings) -> Path | None:
    """ClickHouse configuration for the engine when <home>/chdb-engine/config.d/ holds any (ZooKeeper for KeeperMap
    in the cluster-mode tests): ClickHouse merges config.d/*.xml into the config.xml beside it."""
    root = settings.home.absolute() / "chdb-engine"
    if not any((root / "config.d").glob("*.xml")):
        return None
    (root / "config.xml").write_text("<clickhouse/>\n")
    return root / "config.xml"


def open_server(settings: Settings, host: str | None = None, port: int | None = None,
                pool_size: int | None = None, verbose: bool = False) -> ChdbHttpServer:
    """Open the engine and bind the endpoint (not yet serving). Errors are specific and actionable."""
    host = host or settings.clickhouse_host
    port = port if port is not None else settings.clickhouse_port
    if port:
        processes.require_free_port(host, port, "SENDFLOWR_CLICKHOUSE_URL")
    try:
        engine = ChdbEngine(settings.chdb_data_dir, pool_size or default_pool_size(), engine_config(settings))
    except ClickHouseError as exc:
        hint = ""
        # chDB prints "Cannot lock file .../status" to stderr; its exception says only "Error initializing".
        if ("lock" in exc.message.lower() or "another server" in exc.message.lower()
                or _locked_by_another_process(settings.chdb_data_dir)):
            hint = (f"\nAnother process owns {settings.chdb_data_dir}; only one process may open a chDB data "
                    f"directory (is `sendflowr clickhouse start` already running?).")
        raise SendflowrError(f"cannot open the chDB engine at {settings.chdb_data_dir}: {exc.message}{hint}") from exc
    try:
        return ChdbHttpServer(engine, host, port, verbose)
    except OSError as exc:
        engine.close()
        raise SendflowrError(f"cannot bind {host}:{port} for the ClickHouse endpoint: {exc}") from exc


def _locked_by_another_process(data_dir) -> bool:
    """Does another process hold the ClickHouse status-file lock of this data directory? (on failure only)"""
    import fcntl
    import os

    try:
        fd = os.open(os.path.join(data_dir, "status"), os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def serve_forever(settings: Settings, verbose: bool = False) -> None:
    server = open_server(settings, verbose=verbose)
    host, port = server.server_address[:2]
    stopping = threading.Event()

    def shutdown(_signum, _frame) -> None:
        if not stopping.is_set():
            stopping.set()
            threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    print(f"chDB {server.engine.version} at {settings.chdb_data_dir} serving ClickHouse HTTP on "
          f"http://{host}:{port}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        server.engine.close()  # flushes and releases the data-directory lock
        print("chDB endpoint stopped", flush=True)


def ping(settings: Settings, timeout: float = 1.0) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"{settings.clickhouse_url}/ping", timeout=timeout) as response:
            return response.status == 200
    except OSError:
        return False


def start_background(settings: Settings, timeout: float = 60.0) -> int:
    """Start `sendflowr clickhouse serve` detached; return its pid once /ping answers."""
    pid = processes.running_pid(settings, PROCESS_NAME)
    if pid is not None and ping(settings):
        return pid
    processes.require_free_port(settings.clickhouse_host, settings.clickhouse_port, "SENDFLOWR_CLICKHOUSE_URL")
    pid = processes.spawn(settings, PROCESS_NAME, [sys.executable, "-m", "sendflowr.local.chdb_server"],
                          env=settings.as_env())
    processes.wait_until(lambda: ping(settings), timeout=timeout, what="the embedded ClickHouse endpoint",
                         pid=pid, log=processes.log_file(settings, PROCESS_NAME))
    return pid


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("clickhouse", help="the embedded ClickHouse endpoint (chDB behind HTTP)")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    serve = actions.add_parser("serve", help="serve in the foreground until SIGTERM/Ctrl-C")
    serve.add_argument("--verbose", action="store_true", help="log every request")
    serve.set_defaults(handler=lambda args, settings: serve_forever(settings, args.verbose) or 0)
    start = actions.add_parser("start", help="start in the background and wait until it answers /ping")
    start.set_defaults(handler=_cli_start)
    stop = actions.add_parser("stop", help="stop the background endpoint")
    stop.set_defaults(handler=lambda args, settings: print(
        "stopped" if processes.stop(settings, PROCESS_NAME) else "not running") or 0)
    status = actions.add_parser("status", help="is the endpoint up")
    status.set_defaults(handler=_cli_status)


def _cli_start(_args, settings: Settings) -> int:
    pid = start_background(settings)
    print(f"ClickHouse endpoint (chDB at {settings.chdb_data_dir}) on {settings.clickhouse_url}, pid {pid}")
    return 0


def _cli_status(_args, settings: Settings) -> int:
    pid = processes.running_pid(settings, PROCESS_NAME)
    up = ping(settings)
    print(f"clickhouse: {'up' if up else 'down'} at {settings.clickhouse_url}" + (f", pid {pid}" if pid else ""))
    return 0 if up else 1


if __name__ == "__main__":
    from sendflowr.settings import get_settings

    try:
        serve_forever(get_settings())
    except SendflowrError as exc:
        print(f"sendflowr clickhouse serve: {exc}", file=sys.stderr)
        sys.exit(2)
