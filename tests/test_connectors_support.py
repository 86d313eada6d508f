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
CERT_URL = "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-0000000000000000000000000000test.pem"
TOPIC_ARN = "arn:aws:sns:us-east-1:123456789012:ses-events"


def load_fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


class SnsSigner:
    """Signs SNS envelopes like SNS does, with a self-made certificate served by `fetch` at CERT_URL."""

    def __init__(self, common_name: str = "sns.amazonaws.com"):
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = datetime.now(UTC)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(self.key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=1))
                .not_valid_after(now + timedelta(days=30)).sign(self.key, hashes.SHA256()))
        self.pem = cert.public_bytes(serialization.Encoding.PEM)
        self.fetched: list[str] = []

    def fetch(self, url: str) -> bytes:
        self.fetched.append(url)
        return self.pem

    def sign(self, envelope: dict[str, Any], version: str = "1") -> dict[str, Any]:
        envelope = {**envelope, "SignatureVersion": version}
        digest = hashes.SHA1() if version == "1" else hashes.SHA256()
        signature = self.key.sign(string_to_sign(envelope), padding.PKCS1v15(), digest)
        return {**envelope, "Signature": base64.b64encode(signature).decode()}

    def notification(self, record: Any, version: str = "1", cert_url: str = CERT_URL,
                     message_id: str | None = None) -> bytes:
        envelope = {
            "Type": "Notification", "MessageId": message_id or str(uuid.uuid4()), "TopicArn": TOPIC_ARN,
            "Message": json.dumps(record), "Timestamp": "2017-08-09T22:00:20.000Z", "SigningCertURL": cert_url,
            "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn=x",
        }
        return json.dumps(self.sign(envelope, version)).encode()

    def resign(self, envelope: dict[str, Any]) -> bytes:
        return json.dumps(self.sign({**envelope, "SigningCertURL": CERT_URL})).encode()


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
                "klaviyo_webhook_secret": self.klaviyo_secret}

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
