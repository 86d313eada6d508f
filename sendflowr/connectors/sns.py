"""Amazon SNS HTTP(S) deliveries: the envelope, its signature (v1 SHA1withRSA, v2 SHA256withRSA) and
subscription confirmation (https://docs.aws.amazon.com/sns/latest/dg/sns-verify-signature-of-message.html,
https://docs.aws.amazon.com/sns/latest/dg/http-notification-json.html).

Nothing is fetched or confirmed for a topic that is not allowed (SENDFLOWR_SNS_TOPIC_ARNS; `*` allows any).
The signing certificate is fetched only from `https://sns.<region>.amazonaws.com[.cn]/SimpleNotificationService-
<id>.pem`, where <region> (and the partition) is the TopicArn's, with no user info, port, query or redirect. It
must chain, through the intermediates it carries or names (Authority Information Access, fetched from
*.amazontrust.com only), to one of Amazon's root CAs in certifi's maintained bundle, be valid now, and be issued
to sns.amazonaws.com. Good certificates are cached per URL until they expire, failures for a minute (a forged
URL costs one fetch a minute, not one per request). The SubscribeURL must be the same host with
Action=ConfirmSubscription for the same topic. `fetch` and `confirm` are hooks: tests pass their own CA and
record the confirmation.
"""

from __future__ import annotations

import base64
import binascii
import re
import threading
import time
import urllib.error
import urllib.request
import warnings
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from functools import cache
from typing import Any
from urllib.parse import parse_qs, urlsplit

import certifi
import orjson
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509 import verification
from cryptography.x509.oid import AuthorityInformationAccessOID, NameOID

from sendflowr.connectors.common import ConnectorError
from sendflowr.connectors.signatures import SignatureRejected

SNS_NAME = "sns.amazonaws.com"
TOPIC_ARN = re.compile(r"^arn:(aws|aws-cn|aws-us-gov):sns:([a-z]{2}(?:-[a-z]+)+-\d):(\d{12}):([A-Za-z0-9_.-]{1,256})$")
SNS_HOST = re.compile(r"^sns\.([a-z]{2}(?:-[a-z]+)+-\d)\.amazonaws\.com(\.cn)?$")
CERT_PATH = re.compile(r"^/SimpleNotificationService-[A-Za-z0-9]{1,64}\.pem$")
ISSUER_HOST = re.compile(r"^[a-z0-9.-]+\.amazontrust\.com$")
TYPES = ("Notification", "SubscriptionConfirmation", "UnsubscribeConfirmation")
_NOTIFICATION_KEYS = ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
_CONFIRMATION_KEYS = ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type")
_HASHES = {"1": hashes.SHA1, "2": hashes.SHA256}
FAILURE_TTL_SECONDS = 60.0
_CACHE_SIZE = 256
_MAX_DOWNLOAD = 64 * 1024


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


def topic_region(topic_arn: str) -> tuple[str, str]:
    """(partition, region) of an SNS topic ARN, or SignatureRejected."""
    match = TOPIC_ARN.match(topic_arn)
    if not match:
        raise SignatureRejected(f"SNS TopicArn {topic_arn[:200]!r} is not an SNS topic ARN")
    return match.group(1), match.group(2)


def aws_url(url: Any, what: str, topic_arn: str) -> str:
    """`url` when it is an https URL on the SNS host of the topic's own region; else SignatureRejected. The
    path and query are the caller's to check. Nothing else is ever fetched or visited."""
    partition, region = topic_region(topic_arn)
    problem = f"SNS {what} {str(url)[:120]!r} is not an https URL on sns.{region}.amazonaws.com"
    if not isinstance(url, str):
        raise SignatureRejected(problem)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # "port 99999", a stray "[": not a URL this code will touch
        raise SignatureRejected(problem) from None
    host = SNS_HOST.match(parts.netloc)  # the whole netloc: no user info, no port, no trailing dot
    if (parts.scheme != "https" or port is not None or host is None or host.group(1) != region
            or bool(host.group(2)) != (partition == "aws-cn") or parts.fragment):
        raise SignatureRejected(problem)
    return url


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001 - urllib's signature
        raise urllib.error.HTTPError(req.full_url, code, f"redirect to {newurl[:120]} refused", headers, fp)


_OPENER = urllib.request.build_opener(_NoRedirects)


def _download(url: str) -> bytes:
    with _OPENER.open(url, timeout=10) as response:  # URL checked by the caller; redirects refused
        return response.read(_MAX_DOWNLOAD)


@cache
def amazon_roots() -> tuple[x509.Certificate, ...]:
    """Amazon's root CAs from certifi's bundle (maintained with Mozilla's trust store)."""
    with open(certifi.where(), "rb") as bundle, warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)  # an old non-Amazon root's serial
        certs = x509.load_pem_x509_certificates(bundle.read())
    return tuple(c for c in certs if [a.value for a in c.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
                 == ["Amazon"])


def _certificates(data: bytes) -> list[x509.Certificate]:
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_certificates(data)
    return [x509.load_der_x509_certificate(data)]


def _issuer_urls(cert: x509.Certificate) -> list[str]:
    try:
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        return []
    return [d.access_location.value for d in aia if d.access_method == AuthorityInformationAccessOID.CA_ISSUERS
            and isinstance(d.access_location, x509.UniformResourceIdentifier)]


class SnsVerifier:
    def __init__(self, topic_arns: tuple[str, ...] = (), fetch: Callable[[str], bytes] = _download,
                 confirm: Callable[[str], Any] = _download, roots: tuple[x509.Certificate, ...] | None = None,
                 clock: Callable[[], float] = time.time):
        self.topic_arns = topic_arns
        self._fetch = fetch
        self._confirm = confirm
        self._roots = roots
        self._clock = clock
        self._keys: OrderedDict[str, tuple[rsa.RSAPublicKey, float]] = OrderedDict()
        self._failures: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._lock = threading.Lock()

    def allowed(self, topic_arn: str) -> None:
        if "*" in self.topic_arns or topic_arn in self.topic_arns:
            return
        if not self.topic_arns:
            raise SignatureRejected("no SNS topic is allowed: set SENDFLOWR_SNS_TOPIC_ARNS to your topics' ARNs "
                                    "(or `*` to accept any topic whose signature verifies)")
        raise SignatureRejected(f"SNS TopicArn {topic_arn[:200]!r} is not in SENDFLOWR_SNS_TOPIC_ARNS")

    def _public_key(self, url: str) -> rsa.RSAPublicKey:
        now = self._clock()
        with self._lock:
            cached = self._keys.get(url)
            if cached is not None and now < cached[1]:
                return cached[0]
            failed = self._failures.get(url)
            if failed is not None and now < failed[1]:
                raise SignatureRejected(f"{failed[0]} (cached for {FAILURE_TTL_SECONDS:.0f}s)")
        try:
            key, expires = self._load(url, now)
        except SignatureRejected as exc:
            self._remember(self._failures, url, (exc.reason, now + FAILURE_TTL_SECONDS))
            raise
        self._remember(self._keys, url, (key, expires))
        return key

    def _remember(self, cache: OrderedDict, url: str, value: tuple) -> None:
        with self._lock:
            cache[url] = value
            cache.move_to_end(url)
            while len(cache) > _CACHE_SIZE:
                cache.popitem(last=False)

    def _load(self, url: str, now: float) -> tuple[rsa.RSAPublicKey, float]:
        try:
            chain = _certificates(self._fetch(url))
        except (OSError, ValueError) as exc:
            raise SignatureRejected(f"SNS signing certificate could not be loaded: {str(exc)[:200]}") from None
        if not chain:
            raise SignatureRejected("SNS signing certificate URL served no certificate")
        leaf, intermediates = chain[0], chain[1:]
        if not intermediates:  # SNS serves the leaf alone: its issuer comes from Amazon's own repository
            intermediates = self._issuers(leaf)
        roots = self._roots if self._roots is not None else amazon_roots()
        moment = datetime.fromtimestamp(now, UTC)
        try:
            verifier = (verification.PolicyBuilder().store(verification.Store(list(roots))).time(moment)
                        .build_server_verifier(verification.DNSName(SNS_NAME)))
            verifier.verify(leaf, intermediates)
        except (verification.VerificationError, ValueError) as exc:
            raise SignatureRejected(f"SNS signing certificate does not chain to Amazon's root CA as "
                                    f"{SNS_NAME}: {str(exc)[:200]}") from None
        names = [a.value for a in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        if names != [SNS_NAME]:
            raise SignatureRejected(f"SNS signing certificate is issued to {names}, not {SNS_NAME}")
        key = leaf.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            raise SignatureRejected("SNS signing certificate does not hold an RSA key")
        return key, leaf.not_valid_after_utc.timestamp()

    def _issuers(self, leaf: x509.Certificate) -> list[x509.Certificate]:
        found = []
        for url in _issuer_urls(leaf)[:2]:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not ISSUER_HOST.match(parts.netloc):
                continue  # trust is in the chain's signatures; where it is fetched from is only limited
            try:
                found += _certificates(self._fetch(url))
            except (OSError, ValueError):
                continue
        return found

    def verify(self, envelope: dict[str, Any]) -> None:
        self.allowed(envelope["TopicArn"])
        version = str(envelope.get("SignatureVersion", ""))
        if version not in _HASHES or not isinstance(envelope.get("Signature"), str) or not envelope["Signature"]:
            raise SignatureRejected("SNS Signature or SignatureVersion (1 or 2) missing", missing=True)
        url = aws_url(envelope.get("SigningCertURL"), "SigningCertURL", envelope["TopicArn"])
        parts = urlsplit(url)
        if not CERT_PATH.match(parts.path) or parts.query:
            raise SignatureRejected(f"SNS SigningCertURL {url[:120]!r} is not a SimpleNotificationService .pem")
        key = self._public_key(url)
        try:
            signature = base64.b64decode(envelope["Signature"], validate=True)
            key.verify(signature, string_to_sign(envelope), padding.PKCS1v15(), _HASHES[version]())
        except (InvalidSignature, ValueError, binascii.Error):
            raise SignatureRejected("SNS signature does not match the message") from None

    def confirm_subscription(self, envelope: dict[str, Any]) -> str:
        """Visit SubscribeURL (after verify) so SNS starts delivering; returns the URL visited."""
        url = aws_url(envelope.get("SubscribeURL"), "SubscribeURL", envelope["TopicArn"])
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        if (parts.path not in ("", "/") or query.get("Action") != ["ConfirmSubscription"]
                or query.get("TopicArn") != [envelope["TopicArn"]]):
            raise SignatureRejected(f"SNS SubscribeURL {url[:120]!r} does not confirm this topic's subscription")
        self._confirm(url)
        return url
