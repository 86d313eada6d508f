"""API-key authentication: on when SENDFLOWR_API_KEY is set, for the decision and lookup endpoints.

The key travels in the `X-API-Key` header. Both the presented and the configured key are hashed to a fixed
length before `hmac.compare_digest`, so the comparison time reveals neither content nor length; a missing and
a wrong key get the same 401 body. `key_guard` checks it before the request body is read (sendflowr.asgi_guard);
the dependency stays for the OpenAPI schema and as a second check. Without a key the API serves decisions on
loopback only (`check_exposure`), and never a person's identifiers (/people answers 403).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from typing import Any

from fastapi import HTTPException, Request, Security
from fastapi.security import APIKeyHeader

from sendflowr.clickhouse import is_loopback
from sendflowr.errors import SendflowrError
from sendflowr.settings import Settings, reveal

API_KEY_HEADER = "X-API-Key"
_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False,
                       description="Required when the server has SENDFLOWR_API_KEY set.")
UNAUTHORIZED = {401: {"description": "Missing or invalid API key (only when SENDFLOWR_API_KEY is set).",
                      "content": {"application/json": {"example": {"detail": "missing or invalid API key"}}}}}
UNAUTHORIZED_DETAIL = "missing or invalid API key"
PROTECTED_PATHS = ("/timing-decision", "/timing-decisions")
PROTECTED_PREFIX = "/people/"


def check_exposure(settings: Settings) -> None:
    """Refuse to serve a non-loopback address without a key, unless the documented opt-out is set."""
    if reveal(settings.api_key) or is_loopback(settings.api_host) or settings.api_allow_unauthenticated:
        return
    raise SendflowrError(f"SENDFLOWR_API_HOST is {settings.api_host}, which is not loopback, and SENDFLOWR_API_KEY is "
                         "not set: anyone who can reach the API could use it. Set SENDFLOWR_API_KEY (or, only "
                         "behind something else that authenticates, SENDFLOWR_API_ALLOW_UNAUTHENTICATED=true).")


def key_guard(expected: bytes, on_failure: Callable[[], Any]) -> Callable[[dict], bool]:
    """The early check for sendflowr.asgi_guard: protected paths need the key before their body is read."""

    def authorized(scope: dict) -> bool:
        path = scope["path"]
        if path not in PROTECTED_PATHS and not path.startswith(PROTECTED_PREFIX):
            return True
        presented = next((v for k, v in scope["headers"] if k == b"x-api-key"), b"").decode("latin-1")
        if key_matches(expected, presented):
            return True
        on_failure()
        return False

    return authorized


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()


async def require_api_key(request: Request, presented: str | None = Security(_header)) -> None:
    expected: bytes | None = request.app.state.api_key_digest
    if expected is None:
        return
    if not hmac.compare_digest(_digest(presented or ""), expected):
        request.app.state.metrics.auth_failures.inc()
        raise HTTPException(status_code=401, detail=UNAUTHORIZED_DETAIL,
                            headers={"WWW-Authenticate": API_KEY_HEADER})


def key_matches(expected: bytes | None, presented: str | None) -> bool:
    """`require_api_key`'s test without raising (the fast decision path); no key configured -> True."""
    return expected is None or hmac.compare_digest(_digest(presented or ""), expected)


def key_digest(api_key: Any) -> bytes | None:
    text = reveal(api_key)
    return _digest(text) if text else None
