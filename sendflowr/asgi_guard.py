"""A plain ASGI middleware for SendFlowr's HTTP services: what is refused before a request reaches its route.

- Requests from web pages: a browser adds `Origin` (every non-GET request) or `Sec-Fetch-*` headers, which no
  server-to-server client (an ESP, curl, clickhouse-connect, httpx) sends. `browsers="refuse"` answers them
  403 (the webhook receiver: a page in the developer's browser could otherwise post events to 127.0.0.1);
  `browsers="same-origin"` lets a page of the service itself through (the API's /docs) when its Origin is the
  Host it called, and that Host is a loopback name if the service is bound to loopback (DNS rebinding).
- A key check that runs before the body is read (`authorized(scope)` false: 401), so a stranger cannot make the
  service read and parse megabytes first.
- A body bound (413): Content-Length over the limit is refused at once; a chunked body is counted as it
  streams and cut off at the limit.
- `loopback_only`: a service without a key answers 403 to a request that arrived on a non-loopback address
  (uvicorn's `scope["server"]`), whatever address the settings named.

Plain ASGI, no framework: one dictionary walk over the headers per request.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

import orjson

Scope = dict[str, Any]
Message = dict[str, Any]
_LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


async def _answer(send: Callable[[Message], Awaitable[None]], status: int, detail: str,
                  headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    body = orjson.dumps({"detail": detail})
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *headers]})
    await send({"type": "http.response.body", "body": body})


@lru_cache(maxsize=64)
def over_the_network(address: str) -> bool:
    """A local address that is not loopback (an in-process test transport puts a name there: not an address)."""
    try:
        return not ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


class RequestGuard:
    def __init__(self, app: Any, *, browsers: str, loopback: bool, max_body_bytes: int | None = None,
                 authorized: Callable[[Scope], bool] | None = None,
                 unauthorized: tuple[str, tuple[tuple[bytes, bytes], ...]] = ("unauthorized", ()),
                 loopback_only: bool = False):
        if browsers not in ("refuse", "same-origin"):
            raise ValueError(f"browsers must be 'refuse' or 'same-origin', not {browsers!r}")
        self.app = app
        self.browsers = browsers
        self.loopback = loopback  # the service is bound to a loopback address
        self.max_body_bytes = max_body_bytes
        self.authorized = authorized
        self.unauthorized = unauthorized
        self.loopback_only = loopback_only

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        origin = host = length = None
        browser = False
        for name, value in scope["headers"]:
            if name == b"origin":
                origin = value
            elif name == b"host":
                host = value
            elif name == b"content-length":
                length = value
            elif name.startswith(b"sec-fetch-"):
                browser = True
        if origin is not None or browser:
            problem = self._browser_problem(origin, host)
            if problem:
                return await _answer(send, 403, problem)
        if self.loopback_only and scope.get("server") and over_the_network(scope["server"][0]):
            return await _answer(send, 403, "this service has no key configured and answers on loopback only")
        if self.authorized is not None and not self.authorized(scope):
            return await _answer(send, 401, *self.unauthorized)
        limit = self.max_body_bytes
        if limit is None:
            return await self.app(scope, receive, send)
        if length is not None:
            if not length.isdigit():
                return await _answer(send, 400, "Content-Length is not a number")
            if int(length) > limit:
                return await _answer(send, 413, f"request body over the {limit}-byte limit")
            return await self.app(scope, receive, send)  # the server delivers no more than Content-Length
        await self._counted(scope, receive, send, limit)

    def _browser_problem(self, origin: bytes | None, host: bytes | None) -> str | None:
        if self.browsers == "refuse":
            return "requests from web pages (Origin / Sec-Fetch-* headers) are refused"
        host_text = (host or b"").decode("latin-1").lower()
        if self.loopback and (urlsplit(f"//{host_text}").hostname or "") not in _LOOPBACK_NAMES:
            return f"Host {host_text[:100]!r} is not a loopback name of this service"
        if origin is not None and urlsplit(origin.decode("latin-1")).netloc.lower() != host_text:
            return "cross-origin requests are refused"
        return None

    async def _counted(self, scope: Scope, receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]], limit: int) -> None:
        seen = 0
        refused = False

        async def bounded_receive() -> Message:
            nonlocal seen, refused
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit and not refused:
                    refused = True
                    await _answer(send, 413, f"request body over the {limit}-byte limit")
                    return {"type": "http.disconnect"}  # the route stops reading; its answer is dropped
            return message

        async def guarded_send(message: Message) -> None:
            if not refused:
                await send(message)

        await self.app(scope, bounded_receive, guarded_send)
