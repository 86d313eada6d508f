"""The one process that owns the embedded chDB engine and serves ClickHouse's HTTP interface.

Only one process may open a chDB data directory, while Dagster's webserver, daemon and runs and the
API are separate processes. They all reach this endpoint with the stock clickhouse-connect HTTP
client, exactly as they would reach a ClickHouse server.

Locked down like a server (docs/SECURITY.md): it binds loopback only; a request must name the endpoint
itself in `Host` (no DNS rebinding) and carry no `Origin` or `Sec-Fetch-*` header (no web page); every query
needs a user and password (HTTP basic auth, X-ClickHouse-User/Key, or user/password parameters, compared
in constant time) before its body is read; the users and the engine's limits are `chdb_access`'s, what a
statement may do is `chdb_guard`'s.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import hmac
import secrets
import signal
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

from sendflowr.clickhouse import is_loopback
from sendflowr.errors import SendflowrError
from sendflowr.local import chdb_access, processes
from sendflowr.local.chdb_access import READER_USER, EndpointUsers
from sendflowr.local.chdb_errors import ClickHouseError
from sendflowr.local.chdb_http import (
    _CONTENT_TYPES,
    TRANSPORT_PARAMS,
    ChdbEngine,
    decode_body,
    default_pool_size,
    split_insert_body,
    summary_header,
)
from sendflowr.settings import Settings

PROCESS_NAME = "clickhouse"
MAX_BODY_BYTES = 1 << 30
_QUICKACK = getattr(socket, "TCP_QUICKACK", None)
# The only settings the engine's process gets (its environment holds no other SENDFLOWR_* value, no secret
# it does not use): where its state is, what it serves, and the writer's name and configured password.
ENGINE_SETTINGS = ("home", "chdb_path", "clickhouse_url", "clickhouse_user", "clickhouse_password")
_BROWSER_HEADERS = ("origin", "sec-fetch-site", "sec-fetch-mode", "sec-fetch-dest")


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


class Refused(ClickHouseError):
    """Refused before the request's body is read: the connection is closed after the answer."""


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
        self._serve(read_body=False)

    def do_POST(self) -> None:
        self._serve(read_body=True)

    def do_HEAD(self) -> None:
        try:
            self._check_origin()
        except ClickHouseError as exc:
            self._send_error(exc)
            return
        self._send(200, b"", {"Content-Type": "text/plain; charset=UTF-8"}, head_only=True)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # The standard library answers an unknown method (PUT, OPTIONS, ...) with 501: it is the request's fault.
        super().send_error(405 if code == 501 else code, message, explain)

    def _serve(self, read_body: bool) -> None:
        try:
            self._check_origin()
            url = urlsplit(self.path)
            params = dict(parse_qsl(url.query, keep_blank_values=True))
            if url.path.rstrip("/") in ("/ping", "/replicas_status") or (url.path == "/" and not url.query
                                                                           and not self._has_body()):
                self._send(200, b"Ok.\n", {"Content-Type": "text/plain; charset=UTF-8"})
                return
            if url.path not in ("/", ""):
                raise Refused(f"There is no handle {url.path}", code=1002, status=404)
            user = self._authenticate(params)
            body = self._read_body() if read_body else b""
        except ClickHouseError as exc:
            if isinstance(exc, Refused) and self._has_body():
                self.close_connection = True  # the unread body must not be taken for the next request
            self._send_error(exc, close=self.close_connection)
            return
        try:
            self._handle(params, body, readonly=user == READER_USER or not read_body)
        except Exception as exc:  # a bug of ours, not of the request: a 500 with the reason, never a dead socket
            self._send_error(ClickHouseError(f"{type(exc).__name__}: {exc}"))

    def _check_origin(self) -> None:
        """Only the endpoint's own loopback name in Host (DNS rebinding), and nothing a browser adds."""
        host = (self.headers.get("Host") or "").strip().lower()
        if host not in self.server.allowed_hosts:
            raise Refused(f"Host {host[:100]!r} is not this endpoint ({sorted(self.server.allowed_hosts)[0]})",
                          code=497, status=403)
        for name in _BROWSER_HEADERS:
            if self.headers.get(name) is not None:
                raise Refused("requests from web pages (Origin / Sec-Fetch-* headers) are refused: the embedded "
                              "endpoint is for SendFlowr's processes, not for browsers", code=497, status=403)

    def _authenticate(self, params: dict[str, str]) -> str:
        """The request's user, or ClickHouse's authentication error (code 516, HTTP 403 as a server answers)."""
        given = []
        header = self.headers.get("Authorization")
        if header is not None:
            scheme, _, token = header.partition(" ")
            try:
                user, _, password = base64.b64decode(token.strip(), validate=True).decode("utf-8").partition(":")
            except (binascii.Error, UnicodeDecodeError):
                user, password = "", secrets.token_hex(8)  # unreadable credentials never match
            if scheme.lower() != "basic":
                user, password = "", secrets.token_hex(8)
            given.append((user, password))
        header_user, header_key = self.headers.get("X-ClickHouse-User"), self.headers.get("X-ClickHouse-Key")
        if header_user is not None or header_key is not None:
            given.append((header_user or "default", header_key or ""))
        if "user" in params or "password" in params:
            given.append((params.get("user") or "default", params.get("password", "")))
        if len(given) > 1:
            raise Refused("Invalid authentication: it is not allowed to use the Authorization HTTP header, "
                          "X-ClickHouse-User/Key headers and user/password parameters together. "
                          "(AUTHENTICATION_FAILED)", code=516, status=403)
        user, password = given[0] if given else ("default", "")
        expected = self.server.users.password_of(user)
        # Both sides hashed to a fixed length: the comparison time says nothing about the password or the user.
        matches = hmac.compare_digest(_digest(password), _digest(expected if expected is not None else
                                                                   secrets.token_hex(16)))
        if expected is None or not matches:
            raise Refused(f"{user[:64]}: Authentication failed: password is incorrect, or there is no user with "
                          "such name. (AUTHENTICATION_FAILED)", code=516, status=403)
        return user

    def _has_body(self) -> bool:
        return bool(self.headers.get("Transfer-Encoding")) or (self.headers.get("Content-Length") or "0") != "0"

    def _read_body(self) -> bytes:
        chunked = self.headers.get("Transfer-Encoding", "").lower()
        declared = self.headers.get("Content-Length")
        if chunked and declared is not None:  # ambiguous framing: refuse rather than guess (request smuggling)
            raise Refused("both Transfer-Encoding and Content-Length", code=1002, status=400)
        if chunked == "chunked":
            chunks, total = [], 0
            while True:
                line = self.rfile.readline(1024)
                try:
                    size = int(line.split(b";")[0].strip() or b"0", 16)
                except ValueError:
                    raise Refused(f"bad chunk size {line[:40]!r}", code=1002, status=400) from None
                if size < 0:
                    raise Refused("bad chunk size", code=1002, status=400)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                total += size
                if total > MAX_BODY_BYTES:
                    raise Refused("Request body too large", code=1002, status=413)
                chunks.append(self.rfile.read(size))
                self.rfile.readline(1024)
            raw = b"".join(chunks)
        elif chunked:
            raise Refused(f"Transfer-Encoding {chunked[:40]!r} is not supported", code=1002, status=400)
        else:
            if declared is not None and not declared.strip().isdigit():
                raise Refused(f"bad Content-Length {declared[:40]!r}", code=1002, status=400)
            length = int(declared or 0)
            if length > MAX_BODY_BYTES:
                raise Refused("Request body too large", code=1002, status=413)
            raw = self.rfile.read(length) if length else b""
        return decode_body(raw, self.headers.get("Content-Encoding"), MAX_BODY_BYTES)

    def _handle(self, params: dict[str, str], body: bytes, readonly: bool) -> None:
        query_id = params.get("query_id") or self.headers.get("X-ClickHouse-Query-Id") or ""
        database = params.get("database") or self.headers.get("X-ClickHouse-Database")
        try:
            sql, data = split_insert_body(params.get("query", ""), body)
            if not sql.strip():
                raise ClickHouseError("Empty query", code=62, status=400)
            bind = {k[6:]: v for k, v in params.items() if k.startswith("param_")}
            settings = {k: v for k, v in params.items() if k not in TRANSPORT_PARAMS and not k.startswith("param_")}
            result = self.server.engine.execute(sql, data, params.get("default_format"), database, settings, bind,
                                                readonly=readonly)
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

    def _send_error(self, exc: ClickHouseError, query_id: str = "", close: bool = False) -> None:
        body = f"{exc.message} (version {self.server.engine.version})\n".encode()
        self._send(exc.http_status, body, {
            "Content-Type": "text/plain; charset=UTF-8",
            "X-ClickHouse-Exception-Code": str(exc.code),
            "X-ClickHouse-Query-Id": query_id,
        }, close=close)

    def _send(self, status: int, body: bytes, headers: dict[str, str], head_only: bool = False,
              close: bool = False) -> None:
        # One write for status, headers and body: separate small writes stall on Nagle + delayed ACK.
        lines = [f"HTTP/1.1 {status} {self.responses.get(status, ('',))[0]}",
                 f"Content-Length: {len(body)}",
                 f"Connection: {'close' if close else 'keep-alive'}",
                 "X-ClickHouse-Server-Display-Name: sendflowr-chdb",
                 f"X-ClickHouse-Timezone: {self.server.engine.timezone}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        payload = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.wfile.write(payload if head_only else payload + body)


class ChdbHttpServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, engine: ChdbEngine, host: str, port: int, users: EndpointUsers, verbose: bool = False):
        self.engine = engine
        self.verbose = verbose
        self.users = users
        super().__init__((host, port), _Handler)
        bound = self.server_address[1]
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{bound}"
        # The names this endpoint answers to; a rebinding attacker's domain is none of them.
        self.allowed_hosts = {f"{name}:{bound}" for name in (host.lower(), "127.0.0.1", "localhost", "[::1]")}


def open_server(settings: Settings, host: str | None = None, port: int | None = None,
                pool_size: int | None = None, verbose: bool = False) -> ChdbHttpServer:
    """Open the engine and bind the endpoint (not yet serving). Errors are specific and actionable."""
    host = host or settings.clickhouse_host
    port = port if port is not None else settings.clickhouse_port
    if not is_loopback(host):
        raise SendflowrError(f"the embedded ClickHouse endpoint serves loopback only, not {host} "
                             "(SENDFLOWR_CLICKHOUSE_URL); for remote access run a ClickHouse server "
                             "(docker-compose.yml)")
    if port:
        processes.require_free_port(host, port, "SENDFLOWR_CLICKHOUSE_URL")
    try:
        config = chdb_access.write_engine_config(settings)
        engine = ChdbEngine(settings.chdb_data_dir, pool_size or default_pool_size(), config)
    except ClickHouseError as exc:
        hint = ""
        # chDB prints "Cannot lock file .../status" to stderr; its exception says only "Error initializing".
        if ("lock" in exc.message.lower() or "another server" in exc.message.lower()
                or _locked_by_another_process(settings.chdb_data_dir)):
            hint = (f"\nAnother process owns {settings.chdb_data_dir}; only one process may open a chDB data "
                    f"directory (is `sendflowr clickhouse start` already running?).")
        raise SendflowrError(f"cannot open the chDB engine at {settings.chdb_data_dir}: {exc.message}{hint}") from exc
    try:
        server = ChdbHttpServer(engine, host, port, EndpointUsers("", "", ""), verbose)
    except OSError as exc:
        engine.close()
        raise SendflowrError(f"cannot bind {host}:{port} for the ClickHouse endpoint: {exc}") from exc
    server.users = chdb_access.prepare_users(settings, server.url)
    return server


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
    env = {f"SENDFLOWR_{name.upper()}": value for name, value in engine_env(settings).items()}
    pid = processes.spawn(settings, PROCESS_NAME, [sys.executable, "-m", "sendflowr.local.chdb_server"],
                          env=env, inherit_env=False)
    processes.wait_until(lambda: ping(settings), timeout=timeout, what="the embedded ClickHouse endpoint",
                         pid=pid, log=processes.log_file(settings, PROCESS_NAME))
    return pid


def engine_env(settings: Settings) -> dict[str, str]:
    """The settings the engine's process needs, by field name (its whole SENDFLOWR_* environment)."""
    everything = settings.as_env()
    wanted = {name: everything.get(f"SENDFLOWR_{name.upper()}") for name in ENGINE_SETTINGS}
    return {name: value for name, value in wanted.items() if value}


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
