"""Property-based fuzzing of the webhook receiver (hypothesis), as tests/test_api_fuzz.py does the API: no body,
header or record, well-formed or hostile, yields a 5xx.

The receiver's routes take raw bodies (there is no schema for schemathesis to walk), so the strategies build
them: provider-shaped records whose every field may be junk (wrong types, out-of-range and unicode times,
lone surrogates, huge numbers, over-long text), any JSON value, deep nesting, truncated JSON and random bytes,
under random content types and signature headers. They are posted to every route of a receiver that maps
them (no keys, on loopback, SNS signatures off with `*` topics) and of one that checks every signature; accepted
events go to the real broker. The module prints how many requests were sent and how many got a 5xx.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_connectors_support import WebhookKeys

from sendflowr_webhooks.app import ROUTES, create_app

pytestmark = pytest.mark.integration
SEEN: Counter = Counter()

_text = st.text(st.characters(exclude_categories=()), max_size=60)  # surrogates included
_long_text = st.text(min_size=1000, max_size=5000)
_number = st.one_of(st.integers(min_value=-(2**70), max_value=2**70), st.floats(allow_nan=True,
                                                                               allow_infinity=True))
_time = st.one_of(_number, _text, st.sampled_from([
    "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "2024-02-30T00:00:00Z", "2024-01-01T00:00:00",
    "2024-01-01T00:00:00+05:60", "1e400", "-1", "1700000000", "2024-01-01T00:00:00.123456789Z"]))
_junk = st.one_of(st.none(), st.booleans(), _number, _text, _long_text, st.lists(_text, max_size=3),
                  st.dictionaries(_text, _text, max_size=3))
_json = st.recursive(st.one_of(st.none(), st.booleans(), _number, _text),
                     lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_text, inner, max_size=4)),
                     max_leaves=20)


def _maybe(values: dict) -> st.SearchStrategy[dict]:
    """Records whose fields are each the plausible value, junk, or absent."""
    return st.fixed_dictionaries({}, optional={k: st.one_of(v, _junk) for k, v in values.items()})


_sendgrid = _maybe({"event": st.sampled_from(["processed", "delivered", "open", "click", "bounce", "dropped",
                                              "spamreport", "deferred", "teleported"]),
                    "sg_event_id": _text, "email": st.emails(), "timestamp": _time, "url": _long_text,
                    "useragent": _long_text, "ip": _text, "sg_machine_open": _junk, "type": _text})
_mailgun = st.fixed_dictionaries({"event-data": _maybe({
    "event": st.sampled_from(["opened", "clicked", "failed", "stored", "nope"]), "id": _text,
    "recipient": st.emails(), "timestamp": _time, "url": _long_text, "ip": _text,
    "client-info": _maybe({"bot": _text, "user-agent": _long_text})})},
    optional={"signature": _maybe({"timestamp": _time, "token": _text, "signature": _text})})
_ses_record = _maybe({"eventType": st.sampled_from(["Send", "Open", "Click", "Bounce", "Subscription", "Odd"]),
                      "mail": _maybe({"messageId": _text, "destination": st.lists(st.emails(), max_size=3),
                                      "timestamp": _time}),
                      "open": _maybe({"timestamp": _time, "userAgent": _long_text, "ipAddress": _text}),
                      "click": _maybe({"timestamp": _time, "link": _long_text}),
                      "bounce": _maybe({"timestamp": _time, "bounceType": _text,
                                        "bouncedRecipients": st.lists(_maybe({"emailAddress": st.emails()}))})})
_sns = st.fixed_dictionaries({
    "Type": st.sampled_from(["Notification", "SubscriptionConfirmation", "UnsubscribeConfirmation", "Other"]),
    "MessageId": _text, "TopicArn": st.one_of(_text, st.just("arn:aws:sns:us-east-1:123456789012:t")),
    "Timestamp": _time, "Message": st.one_of(_text, _ses_record.map(json.dumps))},
    optional={"Signature": _text, "SignatureVersion": st.sampled_from(["1", "2", "3"]),
              "SigningCertURL": st.one_of(_text, st.sampled_from([
                  "https://sns.us-east-1.amazonaws.com:99999/SimpleNotificationService-1.pem",
                  "https://[x/SimpleNotificationService-1.pem", "https://sns.s3.amazonaws.com/x.pem"])),
              "SubscribeURL": _text, "Token": _text})
_klaviyo = st.fixed_dictionaries({"data": st.lists(_maybe({
    "topic": st.sampled_from(["event:klaviyo.opened_email", "event:klaviyo.clicked_email", "other"]),
    "payload": _maybe({"data": _maybe({"id": _text, "attributes": _maybe({
        "datetime": _time, "timestamp": _time, "event_properties": _maybe({"URL": _long_text, "$email": _text})}),
        "relationships": _json})})}), max_size=5)}, optional={"meta": _maybe({"klaviyo_webhook_id": _text})})
_native = _maybe({"event_id": _text, "event_type": st.sampled_from(["opened", "clicked", "sent", "x"]),
                  "occurred_at": _time, "identifiers": _maybe({"email": _text, "phone": _text}),
                  "url": _long_text, "user_agent": _long_text, "campaign_id": _long_text, "schema_version": _junk})
_shaped = {"sendgrid": st.lists(_sendgrid, max_size=8), "mailgun": _mailgun, "ses": _sns, "klaviyo": _klaviyo,
           "events": st.one_of(_native, st.lists(_native, max_size=8))}


def _encode(value) -> bytes:
    return json.dumps(value, allow_nan=True).encode("utf-8", "surrogatepass")


_hostile = st.one_of(
    _json.map(_encode),
    st.binary(max_size=300),
    st.integers(min_value=1, max_value=200_000).map(lambda depth: b"[" * depth + b"]" * depth),
    st.integers(min_value=1, max_value=50_000).map(lambda depth: b'{"a":' * depth + b"1" + b"}" * depth),
    _json.map(lambda v: _encode(v)[: max(1, len(_encode(v)) // 2)]),  # truncated
)
_headers = st.fixed_dictionaries({}, optional={
    "Content-Type": st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded", "x/y"]),
    "X-Twilio-Email-Event-Webhook-Signature": _text.filter(str.isascii),
    "X-Twilio-Email-Event-Webhook-Timestamp": st.one_of(st.integers().map(str), _text.filter(str.isascii)),
    "Klaviyo-Signature": _text.filter(str.isascii), "Klaviyo-Timestamp": _text.filter(str.isascii),
    "Klaviyo-Webhook-Id": _text.filter(str.isascii), "Authorization": _text.filter(str.isascii)})


@pytest.fixture
def receivers(settings):
    keys = WebhookKeys()
    mapping = create_app(settings.model_copy(update={"sns_topic_arns": "*", "sns_verify_signatures": False,
                                                     "webhooks_produce_timeout_seconds": 60}))
    checking = create_app(settings.model_copy(update={**keys.settings_update(), "webhooks_events_token": "t0ken",
                                                      "webhooks_produce_timeout_seconds": 60}),
                          sns_fetch=keys.sns.fetch, sns_roots=keys.sns.roots, sns_confirm=lambda _url: None)
    with TestClient(mapping, raise_server_exceptions=False) as open_client, \
            TestClient(checking, raise_server_exceptions=False) as keyed_client:
        yield open_client, keyed_client


def _post(client: TestClient, route: str, body: bytes, headers: dict) -> None:
    response = client.post(f"/webhooks/{route}", content=body, headers=headers)
    SEEN["requests"] += 1
    SEEN[f"{response.status_code // 100}xx"] += 1
    assert response.status_code < 500, (route, body[:300], response.status_code, response.text[:500])


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(data=st.data())
def test_provider_shaped_junk_is_never_a_server_error(receivers, data) -> None:
    for route in ROUTES:
        body = _encode(data.draw(_shaped[route]))
        headers = data.draw(_headers)
        for client in receivers:
            _post(client, route, body, headers)


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(body=_hostile, headers=_headers)
def test_hostile_bodies_are_never_a_server_error(receivers, body: bytes, headers: dict) -> None:
    for route in ROUTES:
        for client in receivers:
            _post(client, route, body, headers)


def test_fuzzing_sent_requests_and_saw_no_server_error() -> None:
    """Runs after the two above (file order): the tally for the report."""
    print(f"\nwebhook fuzz: {SEEN['requests']} requests, by class {dict(sorted(SEEN.items()))}")
    assert SEEN["requests"] >= 2 * len(ROUTES) * (120 + 80) and SEEN["5xx"] == 0
