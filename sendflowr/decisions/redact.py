"""Identifiers never reach logs in clear: they are replaced by a keyed hash that correlates lines of one process
(same identifier, same token) but cannot be reversed by hashing guessed e-mail addresses (the key is random per
process and never written anywhere)."""

from __future__ import annotations

import hashlib
import os

_KEY = os.urandom(16)


def redact(value: str | None) -> str:
    if value is None:
        return "-"
    return "h:" + hashlib.blake2b(value.encode(), digest_size=6, key=_KEY).hexdigest()


def redact_identifiers(identifiers: dict[str, str | None]) -> str:
    """`email=h:1a2b.. phone=h:..` for the identifiers that are present."""
    return " ".join(f"{k}={redact(v)}" for k, v in identifiers.items() if v is not None)
