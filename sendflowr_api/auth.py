"""Optional API-key authentication: on when SENDFLOWR_API_KEY is set, for the decision and lookup endpoints.

The key travels in the `X-API-Key` header. Both the presented and the configured key are hashed to a fixed
length before `hmac.compare_digest`, so the comparison time reveals neither content nor length; a missing and
a wrong key get the same 401 body.
"""

from __future__ import annotations

import hashlib
import hmac

from fastapi import HTTPException, Request, Security
from fastapi.security import APIKeyHeader

API_KEY_HEADER = "X-API-Key"
_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False,
                       description="Required when the server has SENDFLOWR_API_KEY set.")
UNAUTHORIZED = {401: {"description": "Missing or invalid API key (only when SENDFLOWR_API_KEY is set).",
                      "content": {"application/json": {"example": {"detail": "missing or invalid API key"}}}}}


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()


async def require_api_key(request: Request, presented: str | None = Security(_header)) -> None:
    expected: bytes | None = request.app.state.api_key_digest
    if expected is None:
        return
    if not hmac.compare_digest(_digest(presented or ""), expected):
        request.app.state.metrics.auth_failures.inc()
        raise HTTPException(status_code=401, detail="missing or invalid API key",
                            headers={"WWW-Authenticate": API_KEY_HEADER})


def key_matches(expected: bytes | None, presented: str | None) -> bool:
    """`require_api_key`'s test without raising (the fast decision path); no key configured -> True."""
    return expected is None or hmac.compare_digest(_digest(presented or ""), expected)


def key_digest(api_key: str) -> bytes | None:
    return _digest(api_key) if api_key else None
