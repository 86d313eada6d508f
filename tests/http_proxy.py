"""A small HTTP reverse proxy in front of ClickHouse HTTP endpoints, for tests: it routes each request (not
each connection) to a backend chosen by `route`, like a load balancer in front of replicas, can terminate
TLS with a certificate made in the test (tests/tls_material.py), and can answer a ClickHouse error instead of
the backend (`fault`)."""

from __future__ import annotations

import http.client
import itertools
import ssl
import threading
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


class RoutingProxy:
    def __init__(self, backends: list[tuple[str, int]], certificate: Path | None = None, key: Path | None = None,
                 port: int = 0):
        self.backends = backends
        self.requests: list[int] = []  # backend index of every request, in order
        self._turn = itertools.count()
        self._lock = threading.Lock()
        self.route: Callable[[int], int] = lambda n: n % len(self.backends)  # round robin per request
        # Given a request's statement (its `query` parameter, else its body), a ClickHouse error code to answer
        # ("before", code): without passing the request on, the statement never runs; ("after", code): once the
        # backend has run it, instead of its answer. None passes the request on as it is.
        self.fault: Callable[[str], tuple[str, int] | None] = lambda statement: None
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args) -> None:
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _error(self, code: int) -> None:
                message = f"Code: {code}. DB::Exception: injected by the test proxy.".encode()
                self.send_response(500)
                self.send_header("X-ClickHouse-Exception-Code", str(code))
                self.send_header("Content-Length", str(len(message)))
                self.end_headers()
                self.wfile.write(message)

            def _forward(self) -> None:
                body = self._body()
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query).get("query", [""])[0]
                fault = proxy.fault(query or body.decode(errors="replace"))
                if fault is not None and fault[0] == "before":
                    self._error(fault[1])
                    return
                with proxy._lock:
                    index = proxy.route(next(proxy._turn))
                    proxy.requests.append(index)
                host, port = proxy.backends[index]
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                headers["Content-Length"] = str(len(body))
                headers["Host"] = f"{host}:{port}"  # as a balancer addresses its backend (the endpoint checks Host)
                upstream = http.client.HTTPConnection(host, port, timeout=600)
                try:
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    payload = response.read()
                    if fault is not None:
                        self._error(fault[1])
                        return
                    self.send_response(response.status, response.reason)
                    for key, value in response.getheaders():
                        if key.lower() not in _HOP_BY_HOP and key.lower() != "content-length":
                            self.send_header(key, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                finally:
                    upstream.close()

            do_GET = do_POST = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.scheme = "http"
        if certificate is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(certificate, key)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            self.scheme = "https"
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def __enter__(self) -> RoutingProxy:
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self.server.shutdown()
        self.server.server_close()
