"""Amazon SNS HTTP(S) deliveries: the envelope, its signature (v1 SHA1withRSA, v2 SHA256withRSA) and
subscription confirmation (https://docs.aws.amazon.com/sns/latest/dg/sns-verify-signature-of-message.html,
https://docs.aws.amazon.com/sns/latest/dg/http-notification-json.html).

The signing certificate is fetched only from an https URL on sns.<region>.amazonaws.com[.cn] ending in
.pem, cached per URL, and must name sns.amazonaws.com; trust rests on that TLS fetch from AWS's own host.
`fetch` and `confirm` are hooks: tests pass their own certificate and record the confirmation.
"""

from __future__ import annotations

import base64
import binascii
import re
import threading
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import orjson
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from sendflowr.connectors.common import ConnectorError
from sendflowr.connectors.signatures import SignatureRejected

AWS_HOST = re.compile(r"^sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$")
TYPES = ("Notification", "SubscriptionConfirmation", "UnsubscribeConfirmation")
_NOTIFICATION_KEYS = ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
_CONFIRMATION_KEYS = ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type")
_HASHES = {"1": hashes.SHA1, "2": hashes.SHA256}


def parse_envelope(body: bytes) -> dict[str, Any]:
    try:
        envelope = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ConnectorError(f"body: invalid JSON ({exc})") from None
    if not isinstance(envelope, dict) or envelope.get("Type") not in TYPES:
        raise ConnectorError(f"body: not an SNS message (Type must be one of {', '.join(TYPES)})")
    for key in ("MessageId", "TopicArn", "Timestamp", "Message"):
        if not isinstance(envelope.get(key), str):
            raise ConnectorError(f"SNS {key}: missing")
    return envelope


def string_to_sign(envelope: dict[str, Any]) -> bytes:
    keys = _NOTIFICATION_KEYS if envelope["Type"] == "Notification" else _CONFIRMATION_KEYS
    parts = []
    for key in keys:
        value = envelope.get(key)
        if value is None:
            if key == "Subject":
                continue  # optional in notifications
            raise SignatureRejected(f"SNS {key}: missing, cannot check the signature")
        parts.append(f"{key}\n{value}\n")
    return "".join(parts).encode()


def aws_url(url: Any, what: str) -> str:
    """An https URL on an SNS host, or SignatureRejected: nothing else is ever fetched."""
    parts = urlsplit(url if isinstance(url, str) else "")
    if parts.scheme != "https" or not AWS_HOST.match(parts.hostname or "") or parts.port not in (None, 443):
        raise SignatureRejected(f"SNS {what} {str(url)[:120]!r} is not an https URL on sns.<region>.amazonaws.com")
    return url


def _download(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - URL checked by aws_url
        return response.read(64 * 1024)


class SnsVerifier:
    def __init__(self, topic_arns: tuple[str, ...] = (), fetch: Callable[[str], bytes] = _download,
                 confirm: Callable[[str], Any] = _download, common_name: str = "sns.amazonaws.com"):
        self.topic_arns = topic_arns
        self._fetch = fetch
        self._confirm = confirm
        self._common_name = common_name
        self._certs: dict[str, rsa.RSAPublicKey] = {}
        self._lock = threading.Lock()

    def _public_key(self, url: str) -> rsa.RSAPublicKey:
        with self._lock:
            cached = self._certs.get(url)
        if cached is not None:
            return cached
        try:
            cert = x509.load_pem_x509_certificate(self._fetch(url))
        except (OSError, ValueError) as exc:
            raise SignatureRejected(f"SNS signing certificate could not be loaded: {exc}") from None
        names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        if self._common_name not in names:
            raise SignatureRejected(f"SNS signing certificate is issued to {names}, not {self._common_name}")
        now = datetime.now(UTC)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise SignatureRejected("SNS signing certificate is outside its validity period")
        key = cert.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            raise SignatureRejected("SNS signing certificate does not hold an RSA key")
        with self._lock:
            self._certs[url] = key
        return key

    def verify(self, envelope: dict[str, Any]) -> None:
        if self.topic_arns and envelope["TopicArn"] not in self.topic_arns:
            raise SignatureRejected(f"SNS TopicArn {envelope['TopicArn']!r} is not in SENDFLOWR_SNS_TOPIC_ARNS")
        version = str(envelope.get("SignatureVersion", ""))
        if version not in _HASHES or not isinstance(envelope.get("Signature"), str) or not envelope["Signature"]:
            raise SignatureRejected("SNS Signature or SignatureVersion (1 or 2) missing", missing=True)
        key = self._public_key(aws_url(envelope.get("SigningCertURL"), "SigningCertURL"))
        try:
            signature = base64.b64decode(envelope["Signature"], validate=True)
            key.verify(signature, string_to_sign(envelope), padding.PKCS1v15(), _HASHES[version]())
        except (InvalidSignature, ValueError, binascii.Error):
            raise SignatureRejected("SNS signature does not match the message") from None

    def confirm_subscription(self, envelope: dict[str, Any]) -> str:
        """Visit SubscribeURL (after verify) so SNS starts delivering; returns the URL visited."""
        url = aws_url(envelope.get("SubscribeURL"), "SubscribeURL")
        self._confirm(url)
        return url
