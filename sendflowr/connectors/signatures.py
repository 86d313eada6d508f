"""Webhook signature checks for SendGrid (ECDSA P-256), Mailgun and Klaviyo (HMAC-SHA256).

Each check raises SignatureRejected with a short reason; callers answer 401 (missing) or 403 (bad,
stale, replayed). Keys come from settings and are never logged. SNS lives in sns.py (certificates).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import sqlite3
import threading
import time
from datetime import datetime
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key


class SignatureRejected(Exception):
    def __init__(self, reason: str, missing: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.missing = missing


def _check_age(timestamp: float, max_age: float, now: float | None) -> None:
    skew = abs((now if now is not None else time.time()) - timestamp)
    if skew > max_age:
        raise SignatureRejected(f"timestamp is {skew:.0f}s away from now (limit {max_age:.0f}s): stale or replayed")


class SendgridVerifier:
    """SendGrid's Signed Event Webhook: an ECDSA (P-256, SHA-256) signature over timestamp + raw body,
    checked with the base64 DER public key shown in the SendGrid UI."""

    SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
    TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"

    def __init__(self, public_key_b64: str, max_age_seconds: float):
        try:
            key = load_der_public_key(base64.b64decode(public_key_b64, validate=True))
        except (ValueError, binascii.Error) as exc:
            raise ValueError("SENDFLOWR_SENDGRID_VERIFICATION_KEY is not a base64 DER public key") from exc
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise ValueError("SENDFLOWR_SENDGRID_VERIFICATION_KEY is not an elliptic-curve public key")
        self._key = key
        self.max_age = max_age_seconds

    def verify(self, body: bytes, signature: str | None, timestamp: str | None, now: float | None = None) -> None:
        if not signature or not timestamp:
            raise SignatureRejected(f"missing {self.SIGNATURE_HEADER} or {self.TIMESTAMP_HEADER}", missing=True)
        try:
            der = base64.b64decode(signature, validate=True)
            self._key.verify(der, timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, ValueError, binascii.Error):
            raise SignatureRejected("SendGrid signature does not match the body and timestamp") from None
        if self.max_age and timestamp.isdigit():
            _check_age(float(timestamp), self.max_age, now)
        elif self.max_age:
            raise SignatureRejected("SendGrid timestamp is not Unix seconds")


class UsedTokens:
    """Tokens already honoured, shared by every process that opens the same file (uvicorn workers, restarts):
    one SQLite row per token hash, inserted or refused atomically. In memory (this process only) without a path.
    Rows older than `retention` seconds are pruned, and at most `limit` are kept (oldest go first)."""

    def __init__(self, path: Path | None, retention: float, limit: int = 1_000_000):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path) if path else ":memory:", timeout=10, isolation_level=None,
                                   check_same_thread=False)
        if path is not None:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS used (token TEXT PRIMARY KEY, seen REAL NOT NULL)")
        self._db.execute("CREATE INDEX IF NOT EXISTS used_seen ON used (seen)")
        self.retention = retention
        self._limit = limit
        self._lock = threading.Lock()
        self._inserts = 0

    def first_use(self, token: str) -> bool:
        key = hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()
        now = time.time()
        with self._lock:
            try:
                self._db.execute("INSERT INTO used (token, seen) VALUES (?, ?)", (key, now))
            except sqlite3.IntegrityError:
                return False
            self._inserts += 1
            if self._inserts % 1000 == 0:
                self._db.execute("DELETE FROM used WHERE seen < ?", (now - self.retention,))
                self._db.execute("DELETE FROM used WHERE token IN (SELECT token FROM used ORDER BY seen DESC "
                                 "LIMIT -1 OFFSET ?)", (self._limit,))
            return True

    def close(self) -> None:
        with self._lock:
            self._db.close()


# Without an age check a token must still be honoured once: remembered this long.
TOKEN_RETENTION_WITHOUT_AGE = 7 * 24 * 3600


class MailgunVerifier:
    """Mailgun: hex HMAC-SHA256 of timestamp + token with the webhook signing key; a token is honoured once
    and the timestamp must be recent (https://documentation.mailgun.com/docs/mailgun/user-manual/webhooks/
    securing-webhooks). The signature does not cover the body, so the once-only token is what stops a captured
    signature from carrying other events: it is kept in `tokens_path`, shared by every receiver process of the
    state directory, and checked whether or not the age check is on."""

    def __init__(self, signing_key: str, max_age_seconds: float, tokens_path: Path | None = None):
        self._key = signing_key.encode()
        self.max_age = max_age_seconds
        retention = max_age_seconds * 2 if max_age_seconds else TOKEN_RETENTION_WITHOUT_AGE
        self._tokens = UsedTokens(tokens_path, retention)

    def close(self) -> None:
        self._tokens.close()

    def expected(self, timestamp: str, token: str) -> str:
        return hmac.new(self._key, (timestamp + token).encode(), hashlib.sha256).hexdigest()

    def verify(self, signature_block: object, now: float | None = None) -> None:
        if not isinstance(signature_block, dict):
            raise SignatureRejected("missing the `signature` object", missing=True)
        timestamp, token, signature = (signature_block.get(k) for k in ("timestamp", "token", "signature"))
        if not all(isinstance(v, (str, int)) and str(v) for v in (timestamp, token, signature)):
            raise SignatureRejected("signature needs timestamp, token and signature", missing=True)
        timestamp, token, signature = str(timestamp), str(token), str(signature)
        if not hmac.compare_digest(self.expected(timestamp, token), signature.lower()):
            raise SignatureRejected("Mailgun signature does not match timestamp + token")
        try:
            stamp = float(timestamp)
        except ValueError:
            raise SignatureRejected("Mailgun timestamp is not Unix seconds") from None
        if self.max_age:
            _check_age(stamp, self.max_age, now)
        if not self._tokens.first_use(token):
            raise SignatureRejected("Mailgun token was already used: replayed request")


class KlaviyoVerifier:
    """Klaviyo system webhooks: hex HMAC-SHA256 of raw body + Klaviyo-Timestamp with the webhook secret."""

    SIGNATURE_HEADER = "Klaviyo-Signature"
    TIMESTAMP_HEADER = "Klaviyo-Timestamp"

    def __init__(self, secret: str, max_age_seconds: float):
        self._key = secret.encode()
        self.max_age = max_age_seconds

    def expected(self, body: bytes, timestamp: str) -> str:
        return hmac.new(self._key, body + timestamp.encode(), hashlib.sha256).hexdigest()

    def verify(self, body: bytes, signature: str | None, timestamp: str | None, now: float | None = None) -> None:
        if not signature or not timestamp:
            raise SignatureRejected(f"missing {self.SIGNATURE_HEADER} or {self.TIMESTAMP_HEADER}", missing=True)
        if not hmac.compare_digest(self.expected(body, timestamp), signature.strip().lower()):
            raise SignatureRejected("Klaviyo signature does not match the body and timestamp")
        if self.max_age:
            _check_age(_klaviyo_time(timestamp), self.max_age, now)


def _klaviyo_time(value: str) -> float:
    try:
        number = float(value)
        return number / 1000 if number > 1e11 else number  # milliseconds or seconds
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise SignatureRejected("Klaviyo-Timestamp is neither Unix time nor ISO 8601") from None
