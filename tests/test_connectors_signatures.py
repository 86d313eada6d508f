"""Signature checks: SendGrid's published test vector, Mailgun/Klaviyo HMAC and SNS certificates made here;
every tampered body, timestamp, token or certificate URL is rejected."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from test_connectors_support import CERT_URL, ISSUER_URL, SnsSigner, load_fixture

from sendflowr.connectors.signatures import KlaviyoVerifier, MailgunVerifier, SendgridVerifier, SignatureRejected
from sendflowr.connectors.sns import parse_envelope

# sendgrid/sendgrid-python test/unit/test_eventwebhook.py: SendGrid's own vector.
SG_PUBLIC_KEY = ("MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE83T4O/n84iotIvIW4mdBgQ/7dAfSmpqIM8kF9mN1flpVKS3GRqe62gw+"
                 "2fNNRaINXvVpiglSI8eNEc6wEA3F+g==")
SG_SIGNATURE = "MEUCIGHQVtGj+Y3LkG9fLcxf3qfI10QysgDWmMOVmxG0u6ZUAiEAyBiXDWzM+uOe5W0JuG+luQAbPIqHh89M15TluLtEZtM="
SG_TIMESTAMP = "1600112502"
SG_PAYLOAD = (json.dumps([{
    "email": "hello@world.com", "event": "dropped", "reason": "Bounced Address",
    "sg_event_id": "ZHJvcC0xMDk5NDkxOS1MUnpYbF9OSFN0T0doUTRrb2ZTbV9BLTA",
    "sg_message_id": "LRzXl_NHStOGhQ4kofSm_A.filterdrecv-p3mdw1-756b745b58-kmzbl-18-5F5FC76C-9.0",
    "smtp-id": "<LRzXl_NHStOGhQ4kofSm_A@ismtpd0039p1iad1.sendgrid.net>", "timestamp": 1600112492,
}], sort_keys=True, separators=(",", ":")) + "\r\n").encode()
SG_NOW = 1600112510.0


def test_sendgrid_published_vector_verifies() -> None:
    SendgridVerifier(SG_PUBLIC_KEY, 600).verify(SG_PAYLOAD, SG_SIGNATURE, SG_TIMESTAMP, now=SG_NOW)


@pytest.mark.parametrize(("body", "signature", "timestamp", "now", "reason"), [
    (SG_PAYLOAD.replace(b"dropped", b"droppee"), SG_SIGNATURE, SG_TIMESTAMP, SG_NOW, "does not match"),
    (SG_PAYLOAD.rstrip(), SG_SIGNATURE, SG_TIMESTAMP, SG_NOW, "does not match"),
    (SG_PAYLOAD, SG_SIGNATURE, "1600112503", SG_NOW, "does not match"),
    (SG_PAYLOAD, "MEUCIQCtIHJeH93Y+qpYeWrySphQgpNGNr/U+UyUlBkU6n7RAwIgJTz2C+8a8xonZGi6BpSzoQsbVRamr2nlxFDWYNH3j/0=",
     SG_TIMESTAMP, SG_NOW, "does not match"),
    (SG_PAYLOAD, "not base64!", SG_TIMESTAMP, SG_NOW, "does not match"),
    (SG_PAYLOAD, SG_SIGNATURE, SG_TIMESTAMP, SG_NOW + 3600, "stale or replayed"),
])
def test_sendgrid_tampering_is_rejected(body, signature, timestamp, now, reason) -> None:
    with pytest.raises(SignatureRejected, match=reason):
        SendgridVerifier(SG_PUBLIC_KEY, 600).verify(body, signature, timestamp, now=now)


def test_sendgrid_wrong_key_and_missing_headers() -> None:
    other = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(SignatureRejected):
        SendgridVerifier(base64.b64encode(other).decode(), 0).verify(SG_PAYLOAD, SG_SIGNATURE, SG_TIMESTAMP)
    with pytest.raises(SignatureRejected) as missing:
        SendgridVerifier(SG_PUBLIC_KEY, 0).verify(SG_PAYLOAD, None, SG_TIMESTAMP)
    assert missing.value.missing
    with pytest.raises(ValueError, match="SENDFLOWR_SENDGRID_VERIFICATION_KEY"):
        SendgridVerifier("bm90IGEga2V5", 0)


def test_sendgrid_own_keys_round_trip() -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    public = base64.b64encode(private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode()
    stamp = str(int(time.time()))
    body = json.dumps(load_fixture("sendgrid_events.json")).encode()
    signature = base64.b64encode(private.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))).decode()
    SendgridVerifier(public, 600).verify(body, signature, stamp)


# mailgun/mailgun-php tests/Api/WebhookTest.php: the SDK's signing vector (key, timestamp, token, signature).
MG_KEY = "key-3ax6xnjp29jd6fds4gc373sgvjxteol0"
MG_VECTOR = {"timestamp": "1403645220", "token": "5egbgr1vjgqxtrnp65xfznchgdccwh5d6i09vijqi3whgowmn6",
             "signature": "9cfc5c41582e51246e73c88d34db3af0a3a2692a76fbab81492842f000256d33"}


def test_mailgun_published_vector_verifies_and_tampering_fails() -> None:
    MailgunVerifier(MG_KEY, 600).verify(MG_VECTOR, now=1403645230)
    for tampered in ({**MG_VECTOR, "token": "owyldpe6nxhmrn78epljl6bj0orrki1u3d2v5e6cnlmmuox8jr"},
                     {**MG_VECTOR, "timestamp": "1403645221"},
                     {**MG_VECTOR, "signature": MG_VECTOR["signature"][:-1] + "4"}):
        with pytest.raises(SignatureRejected, match="does not match"):
            MailgunVerifier(MG_KEY, 600).verify(tampered, now=1403645230)
    with pytest.raises(SignatureRejected, match="stale"):
        MailgunVerifier(MG_KEY, 600).verify(MG_VECTOR)  # the vector is from 2014: far too old for now
    with pytest.raises(SignatureRejected, match="does not match"):
        MailgunVerifier("another-key", 600).verify(MG_VECTOR, now=1403645230)


def mailgun_block(key: str, token: str, stamp: str) -> dict:
    digest = hmac.new(key.encode(), (stamp + token).encode(), hashlib.sha256).hexdigest()
    return {"timestamp": stamp, "token": token, "signature": digest}


def test_mailgun_signature_freshness_and_replay() -> None:
    key = "key-test-0123456789abcdef"
    verifier = MailgunVerifier(key, 900)
    stamp = str(int(time.time()))
    block = mailgun_block(key, "a" * 50, stamp)
    verifier.verify(block)
    with pytest.raises(SignatureRejected, match="already used"):
        verifier.verify(block)  # the same token twice is a replay
    with pytest.raises(SignatureRejected, match="does not match"):
        verifier.verify({**mailgun_block(key, "b" * 50, stamp), "token": "c" * 50})
    with pytest.raises(SignatureRejected, match="does not match"):
        verifier.verify(mailgun_block("another-key", "d" * 50, stamp))
    with pytest.raises(SignatureRejected, match="stale"):
        verifier.verify(mailgun_block(key, "e" * 50, str(int(time.time()) - 3600)))
    with pytest.raises(SignatureRejected) as missing:
        verifier.verify(None)
    assert missing.value.missing


def test_klaviyo_signature() -> None:
    secret = "klaviyo-secret-0123456789"
    verifier = KlaviyoVerifier(secret, 900)
    body = json.dumps(load_fixture("klaviyo_webhook.json")).encode()
    stamp = str(int(time.time()))
    good = hmac.new(secret.encode(), body + stamp.encode(), hashlib.sha256).hexdigest()
    verifier.verify(body, good, stamp)
    with pytest.raises(SignatureRejected):
        verifier.verify(body + b" ", good, stamp)
    with pytest.raises(SignatureRejected):
        verifier.verify(body, good, str(int(stamp) + 1))
    old = str(int(time.time()) - 7200)
    with pytest.raises(SignatureRejected, match="stale"):
        verifier.verify(body, hmac.new(secret.encode(), body + old.encode(), hashlib.sha256).hexdigest(), old)


@pytest.mark.parametrize("version", ["1", "2"])
def test_sns_signatures_of_both_versions_verify(version: str) -> None:
    signer = SnsSigner()
    verifier = signer.verifier()
    record = load_fixture("ses_events.json")[2]
    envelope = parse_envelope(signer.notification(record, version=version))
    verifier.verify(envelope)
    verifier.verify(envelope)
    assert signer.fetched == [CERT_URL, ISSUER_URL]  # cached after the first fetch
    tampered = {**envelope, "Message": envelope["Message"].replace("192.0.2.1", "192.0.2.2")}
    with pytest.raises(SignatureRejected, match="does not match"):
        verifier.verify(tampered)
    with pytest.raises(SignatureRejected, match="does not match"):
        verifier.verify({**envelope, "Timestamp": "2030-01-01T00:00:00.000Z"})


def test_sns_subscription_confirmation_is_verified_then_confirmed() -> None:
    signer = SnsSigner()
    visited = []
    verifier = signer.verifier(confirm=visited.append)
    envelope = parse_envelope(signer.resign(load_fixture("sns_subscription_confirmation.json")))
    verifier.verify(envelope)
    assert verifier.confirm_subscription(envelope) == envelope["SubscribeURL"]
    assert visited == [envelope["SubscribeURL"]]
    with pytest.raises(SignatureRejected, match="does not match"):
        verifier.verify({**envelope, "SubscribeURL": "https://sns.us-west-2.amazonaws.com/?Action=Other"})
    evil = signer.resign({**load_fixture("sns_subscription_confirmation.json"),
                          "SubscribeURL": "https://attacker.example.com/confirm"})
    with pytest.raises(SignatureRejected, match="not an https URL"):
        verifier.confirm_subscription(parse_envelope(evil))
    other_action = signer.resign({**load_fixture("sns_subscription_confirmation.json"),
                                  "SubscribeURL": "https://sns.us-west-2.amazonaws.com/?Action=Unsubscribe"})
    with pytest.raises(SignatureRejected, match="does not confirm"):
        verifier.confirm_subscription(parse_envelope(other_action))


@pytest.mark.parametrize("url", [
    "http://sns.us-east-1.amazonaws.com/SimpleNotificationService-x.pem",
    "https://sns.us-east-1.amazonaws.com.evil.example/SimpleNotificationService-x.pem",
    "https://evil.example/sns.us-east-1.amazonaws.com/x.pem",
    "https://s3.amazonaws.com/x.pem",
    "https://sns.us-east-1.amazonaws.com:8443/x.pem",
])
def test_sns_certificates_are_only_fetched_from_sns_hosts(url: str) -> None:
    signer = SnsSigner()
    verifier = signer.verifier()
    envelope = parse_envelope(signer.notification(load_fixture("ses_events.json")[0], cert_url=url))
    with pytest.raises(SignatureRejected, match="not an https URL"):
        verifier.verify(envelope)
    assert signer.fetched == []


def test_sns_rejects_foreign_certificates_topics_and_unsigned_messages() -> None:
    signer = SnsSigner(common_name="attacker.example.com")
    envelope = parse_envelope(signer.notification(load_fixture("ses_events.json")[0]))
    with pytest.raises(SignatureRejected, match="sns.amazonaws.com"):
        signer.verifier().verify(envelope)
    good = SnsSigner()
    envelope = parse_envelope(good.notification(load_fixture("ses_events.json")[0]))
    with pytest.raises(SignatureRejected, match="SENDFLOWR_SNS_TOPIC_ARNS"):
        good.verifier(("arn:aws:sns:us-east-1:123456789012:other",)).verify(envelope)
    good.verifier((envelope["TopicArn"],)).verify(envelope)
    unsigned = {k: v for k, v in envelope.items() if k != "Signature"}
    with pytest.raises(SignatureRejected) as missing:
        good.verifier().verify(unsigned)
    assert missing.value.missing


@pytest.mark.parametrize("field", ["Signature", "SignatureVersion", "SigningCertURL", "Subject", "Timestamp"])
@pytest.mark.parametrize("junk", [None, 7, [], {}, ""])
def test_sns_junk_envelope_fields_are_rejected_not_crashes(field: str, junk) -> None:
    signer = SnsSigner()
    envelope = {**parse_envelope(signer.notification(load_fixture("ses_events.json")[0])), field: junk}
    if field == "Subject" and junk is None:  # an absent Subject is not signed: still the same message
        signer.verifier().verify(envelope)
        return
    with pytest.raises(SignatureRejected):
        signer.verifier().verify(envelope)
