"""Webhook signature checks for SendGrid (ECDSA P-256), Mailgun and Klaviyo (HMAC-SHA256).

Each check raises SignatureRejected with a short reason; callers answer 401 (missing) or 403 (bad,
stale, replayed). Keys come from settings and are never logged. SNS lives in sns.py (certificates).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import threading
import time
from collections import OrderedDict
from datetime import datetime

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


class _SeenTokens:
    """Tokens seen within the replay window (bounded, oldest dropped first)."""

    def __init__(self, limit: int = 100_000):
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._limit = limit
        self._lock = threading.Lock()

    def first_use(self, token: str, stamp: float, window: float) -> bool:
        with self._lock:
            horizon = time.time() - window
            while self._seen and (len(self._seen) >= self._limit or next(iter(self._seen.values())) < horizon):
                self._seen.popitem(last=False)
            if token in self._seen:
                return False
            self._seen[token] = stamp
            return True


class MailgunVerifier:
    """Mailgun: hex HMAC-SHA256 of timestamp + token with the webhook signing key; a token is honoured once
    and the timestamp must be recent (https://documentation.mailgun.com/docs/mailgun/user-manual/webhooks/
    securing-webhooks)."""

    def __init__(self, signing_key: str, max_age_seconds: float):
        self._key = signing_key.encode()
        self.max_age = max_age_seconds
        self._tokens = _SeenTokens()

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
            if not self._tokens.first_use(token, stamp, self.max_age * 2):
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
