"""Test helpers for connectors: fixtures, an SNS signer with its own certificate (SNS's real certificate
cannot sign test messages), and signing helpers for webhook posts."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from sendflowr.connectors.sns import string_to_sign

FIXTURES = Path(__file__).parent / "fixtures" / "connectors"
CERT_PATH = "/SimpleNotificationService-0000000000000000000000000000test.pem"
CERT_URL = f"https://sns.us-east-1.amazonaws.com{CERT_PATH}"
ISSUER_URL = "http://crt.test.amazontrust.com/test-intermediate.cer"
TOPIC_ARN = "arn:aws:sns:us-east-1:123456789012:ses-events"
SNS_TOPICS = f"{TOPIC_ARN},arn:aws:sns:us-west-2:123456789012:MyTopic"  # ours and the confirmation fixture's


def load_fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def cert_url(topic_arn: str) -> str:
    return f"https://sns.{topic_arn.split(':')[3]}.amazonaws.com{CERT_PATH}"


class SnsPki:
    """A root CA, an intermediate and leaf certificates made here, shaped like Amazon's: the leaf names its
    issuer's certificate by Authority Information Access, as SNS signing certificates do."""

    def __init__(self):
        self.now = datetime.now(UTC)
        self.root_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.root = self._ca("Test Root CA", self.root_key, None, None)
        self.intermediate_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.intermediate = self._ca("Test RSA 2048 M01", self.intermediate_key, self.root, self.root_key)

    def _ca(self, name: str, key, issuer, issuer_key) -> x509.Certificate:
        subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test"),
                             x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = (x509.CertificateBuilder().subject_name(subject)
                   .issuer_name(issuer.subject if issuer else subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(self.now - timedelta(days=10))
                   .not_valid_after(self.now + timedelta(days=3650))
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None if issuer is None else 0), True)
                   .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), True)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False))
        if issuer is not None:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), False)
        return builder.sign(issuer_key or key, hashes.SHA256())

    def leaf(self, key, common_name: str = "sns.amazonaws.com", days: int = 30, issuer=None,
             issuer_key=None, self_signed: bool = False) -> x509.Certificate:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        issuer = issuer or self.intermediate
        issuer_key = key if self_signed else issuer_key or self.intermediate_key
        return (x509.CertificateBuilder().subject_name(name)
                .issuer_name(name if self_signed else issuer.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(self.now - timedelta(days=1))
                .not_valid_after(self.now + timedelta(days=days))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(common_name)]), False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
                .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False, False), True)
                .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), False)
                .add_extension(x509.AuthorityInformationAccess([x509.AccessDescription(
                    x509.oid.AuthorityInformationAccessOID.CA_ISSUERS, x509.UniformResourceIdentifier(ISSUER_URL))]),
                    False)
                .sign(issuer_key, hashes.SHA256()))


class SnsSigner:
    """Signs SNS envelopes like SNS does, with a certificate of `SnsPki` served by `fetch` at the signing
    certificate URL of the topic's region (and the intermediate at its AIA URL)."""

    def __init__(self, common_name: str = "sns.amazonaws.com", pki: SnsPki | None = None, self_signed: bool = False):
        self.pki = pki or SnsPki()
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        cert = self.pki.leaf(self.key, common_name, self_signed=self_signed)
        self.pem = cert.public_bytes(serialization.Encoding.PEM)
        self.fetched: list[str] = []

    @property
    def roots(self) -> tuple[x509.Certificate, ...]:
        return (self.pki.root,)

    def fetch(self, url: str) -> bytes:
        self.fetched.append(url)
        if url == ISSUER_URL:
            return self.pki.intermediate.public_bytes(serialization.Encoding.DER)
        return self.pem

    def verifier(self, topic_arns: tuple[str, ...] = ("*",), **kwargs: Any):
        from sendflowr.connectors.sns import SnsVerifier

        return SnsVerifier(topic_arns, fetch=self.fetch, roots=self.roots, **kwargs)

    def sign(self, envelope: dict[str, Any], version: str = "1") -> dict[str, Any]:
        envelope = {**envelope, "SignatureVersion": version}
        digest = hashes.SHA1() if version == "1" else hashes.SHA256()
        signature = self.key.sign(string_to_sign(envelope), padding.PKCS1v15(), digest)
        return {**envelope, "Signature": base64.b64encode(signature).decode()}

    def notification(self, record: Any, version: str = "1", cert_url: str = CERT_URL,
                     message_id: str | None = None, topic_arn: str = TOPIC_ARN) -> bytes:
        envelope = {
            "Type": "Notification", "MessageId": message_id or str(uuid.uuid4()), "TopicArn": topic_arn,
            "Message": json.dumps(record), "Timestamp": "2017-08-09T22:00:20.000Z", "SigningCertURL": cert_url,
            "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn=x",
        }
        return json.dumps(self.sign(envelope, version)).encode()

    def resign(self, envelope: dict[str, Any]) -> bytes:
        return json.dumps(self.sign({**envelope, "SigningCertURL": cert_url(envelope["TopicArn"])})).encode()


class WebhookKeys:
    """Keys for every signed provider, and headers/bodies signed with them."""

    def __init__(self):
        from cryptography.hazmat.primitives.asymmetric import ec

        self.sendgrid_private = ec.generate_private_key(ec.SECP256R1())
        self.sendgrid_public = base64.b64encode(self.sendgrid_private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode()
        self.mailgun_key = "mailgun-" + uuid.uuid4().hex
        self.klaviyo_secret = "klaviyo-" + uuid.uuid4().hex
        self.sns = SnsSigner()

    def settings_update(self) -> dict[str, Any]:
        return {"sendgrid_verification_key": self.sendgrid_public, "mailgun_signing_key": self.mailgun_key,
                "klaviyo_webhook_secret": self.klaviyo_secret, "sns_topic_arns": SNS_TOPICS}

    def sendgrid_headers(self, body: bytes, stamp: str | None = None) -> dict[str, str]:
        from cryptography.hazmat.primitives.asymmetric import ec

        stamp = stamp or str(int(datetime.now(UTC).timestamp()))
        signature = self.sendgrid_private.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))
        return {"X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
                "X-Twilio-Email-Event-Webhook-Timestamp": stamp, "Content-Type": "application/json"}

    def mailgun_body(self, body: dict[str, Any]) -> bytes:
        import hashlib
        import hmac

        stamp, token = str(int(datetime.now(UTC).timestamp())), uuid.uuid4().hex + uuid.uuid4().hex[:18]
        digest = hmac.new(self.mailgun_key.encode(), (stamp + token).encode(), hashlib.sha256).hexdigest()
        return json.dumps({**body, "signature": {"timestamp": stamp, "token": token, "signature": digest}}).encode()

    def klaviyo_headers(self, body: bytes, webhook_id: str) -> dict[str, str]:
        import hashlib
        import hmac

        stamp = datetime.now(UTC).isoformat()
        digest = hmac.new(self.klaviyo_secret.encode(), body + stamp.encode(), hashlib.sha256).hexdigest()
        return {"Klaviyo-Signature": digest, "Klaviyo-Timestamp": stamp, "Klaviyo-Webhook-Id": webhook_id}
