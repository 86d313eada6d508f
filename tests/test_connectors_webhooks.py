"""The webhook receiver on the real broker: every documented payload, signed as its provider signs it,
lands in the events table with the right fields; retries land once; bad requests get a clear 4xx and
produce nothing; an unreachable broker gives 503."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from test_connectors_support import FIXTURES, WebhookKeys, load_fixture

from sendflowr.connectors import FORMATS
from sendflowr.ingest import IngestOptions, ingest_once
from sendflowr.local.processes import free_port
from sendflowr_webhooks.app import create_app

pytestmark = pytest.mark.integration

COLUMNS = ("event_id", "event_type", "occurred_at", "email", "klaviyo_id", "esp", "message_id", "campaign_id",
           "url", "bounce_type", "machine_open", "bot_click", "ip")


def landed(settings, ch) -> dict[str, dict]:
    ingest_once(settings, ch, IngestOptions(until_caught_up=True), log=lambda _line: None)
    rows = ch.query(f"SELECT {', '.join(COLUMNS)} FROM {settings.clickhouse_database}.events").named_results()
    return {row["event_id"]: row for row in rows}


def expected_row(event: dict) -> dict:
    ids = event["identifiers"]
    occurred = datetime.fromisoformat(event["occurred_at"].replace("Z", "+00:00")).astimezone(UTC)
    return {"event_id": event["event_id"], "event_type": event["event_type"],
            "occurred_at": occurred.replace(microsecond=occurred.microsecond // 1000 * 1000, tzinfo=None),
            "email": ids.get("email", ""), "klaviyo_id": ids.get("klaviyo_id", ""), "esp": event.get("esp", ""),
            "message_id": event.get("message_id", ""), "campaign_id": event.get("campaign_id", ""),
            "url": event.get("url", ""), "bounce_type": event.get("bounce_type", ""),
            "machine_open": int(event.get("machine_open", False)), "bot_click": int(event.get("bot_click", False)),
            "ip": event.get("ip", "")}


def naive(row: dict) -> dict:
    value = row["occurred_at"]
    return {**row, "occurred_at": value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value}


@pytest.fixture
def keys() -> WebhookKeys:
    return WebhookKeys()


@pytest.fixture
def client(settings, keys):
    confirmed: list[str] = []
    # A generous produce timeout: a fresh broker on a loaded box can take seconds to hand out producer ids.
    update = {**keys.settings_update(), "webhooks_produce_timeout_seconds": 60}
    app = create_app(settings.model_copy(update=update), sns_fetch=keys.sns.fetch,
                     sns_confirm=confirmed.append, sns_roots=keys.sns.roots)
    with TestClient(app) as test_client:
        test_client.confirmed = confirmed
        yield test_client


MAILGUN_FILES = ("mailgun_delivered.json", "mailgun_opened.json", "mailgun_opened_apple.json",
                 "mailgun_clicked.json", "mailgun_failed.json", "mailgun_unsubscribed.json",
                 "mailgun_complained.json")


def post_everything(client, keys) -> list[dict]:
    """Post every documented payload as its provider would; return the events they should become."""
    expected: list[dict] = []
    sendgrid = json.dumps(load_fixture("sendgrid_events.json")).encode()
    response = client.post("/webhooks/sendgrid", content=sendgrid, headers=keys.sendgrid_headers(sendgrid))
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 11 and response.json()["skipped"] == {
        "sendgrid:deferred": 1, "sendgrid:group_resubscribe": 1}
    expected += FORMATS["sendgrid"](load_fixture("sendgrid_events.json")).events
    for name in MAILGUN_FILES:
        response = client.post("/webhooks/mailgun", content=keys.mailgun_body(load_fixture(name)))
        assert response.status_code == 200, (name, response.text)
        expected += FORMATS["mailgun"]([load_fixture(name)]).events
    for record in load_fixture("ses_events.json"):
        response = client.post("/webhooks/ses", content=keys.sns.notification(record, version="2"))
        assert response.status_code == 200, response.text
        expected += FORMATS["ses"]([record]).events
    klaviyo = (FIXTURES / "klaviyo_webhook.json").read_bytes()
    response = client.post("/webhooks/klaviyo", content=klaviyo,
                           headers=keys.klaviyo_headers(klaviyo, "01HF40WEBHOOKID0000000000"))
    assert response.status_code == 200, response.text
    assert response.json()["skipped"] == {"klaviyo:sent_sms": 1}
    expected += FORMATS["klaviyo"](load_fixture("klaviyo_webhook.json")["data"]).events
    native = [json.loads(line) for line in (FIXTURES / "native_events.jsonl").read_text().splitlines()]
    response = client.post("/webhooks/events", json=native)
    assert response.status_code == 200 and response.json()["accepted"] == 2
    expected += native
    return expected


def test_every_documented_payload_round_trips_to_the_events_table(settings, ch, client, keys) -> None:
    expected = post_everything(client, keys)
    rows = landed(settings, ch)
    assert len(expected) == 11 + 7 + 8 + 3 + 2
    assert set(rows) == {e["event_id"] for e in expected}
    for event in expected:
        assert naive(rows[event["event_id"]]) == expected_row(event), event["event_id"]
    # spot checks independent of the mapper's own output
    assert rows["sendgrid:Ty6dF2gHs1QMvCzPmNhE4g=="]["machine_open"] == 1
    assert rows["sendgrid:6g4ZI7SA-xmRDv57GoPIPw=="]["bounce_type"] == "hard"
    assert rows["mailgun:Apq1mS0xTq6bB8b3PZk7sw"]["machine_open"] == 1
    assert rows["mailgun:G9Bn5sl1TC6nu79C8C0bwg"]["event_type"] == "bounced"
    assert rows["klaviyo:4UxDmyTJPn7"]["email"] == "sarah.mason@klaviyo-demo.com"
    ses_types = sorted(r["event_type"] for r in rows.values() if r["esp"] == "ses")
    assert ses_types == ["bounced", "bounced", "clicked", "complained", "delivered", "opened", "sent", "unsubscribed"]


def test_provider_retries_land_once(settings, ch, client, keys) -> None:
    sendgrid = json.dumps(load_fixture("sendgrid_events.json")).encode()
    open_record = load_fixture("ses_events.json")[2]
    for _ in range(2):  # SendGrid re-signs each attempt; SNS resends the same message id
        assert client.post("/webhooks/sendgrid", content=sendgrid,
                           headers=keys.sendgrid_headers(sendgrid)).status_code == 200
        assert client.post("/webhooks/ses", content=keys.sns.notification(
            open_record, message_id="c1f1e4b6-0000-4000-8000-000000000001")).status_code == 200
        assert client.post("/webhooks/mailgun", content=keys.mailgun_body(
            load_fixture("mailgun_clicked.json"))).status_code == 200
    rows = landed(settings, ch)
    assert len(rows) == 11 + 1 + 1
    assert ch.command(f"SELECT count() FROM {settings.clickhouse_database}.events") == 13


def test_bad_requests_get_a_clear_4xx_and_lose_nothing_good(settings, ch, client, keys) -> None:
    records = load_fixture("sendgrid_events.json")
    body = json.dumps(records).encode()
    unsigned = client.post("/webhooks/sendgrid", content=body)
    assert unsigned.status_code == 401 and "X-Twilio-Email-Event-Webhook-Signature" in unsigned.json()["detail"]
    headers = keys.sendgrid_headers(body)
    tampered = client.post("/webhooks/sendgrid", content=body.replace(b"example@test.com", b"evil@test.com"),
                           headers=headers)
    assert tampered.status_code == 403
    stale = client.post("/webhooks/sendgrid", content=body, headers=keys.sendgrid_headers(body, "1600000000"))
    assert stale.status_code == 403 and "stale" in stale.json()["detail"]
    broken = b"[{\"event\": "
    assert client.post("/webhooks/sendgrid", content=broken,
                       headers=keys.sendgrid_headers(broken)).status_code == 400
    not_array = b'{"event": "open"}'
    assert client.post("/webhooks/sendgrid", content=not_array,
                       headers=keys.sendgrid_headers(not_array)).status_code == 400
    all_bad = json.dumps([{"event": "open", "email": "a@b.c", "timestamp": 1513299569}]).encode()
    response = client.post("/webhooks/sendgrid", content=all_bad, headers=keys.sendgrid_headers(all_bad))
    assert response.status_code == 422
    assert response.json()["rejected"] == [{"index": 0, "reason": "sg_event_id: missing (needed to deduplicate "
                                                                  "retries)"}]
    mixed = json.dumps([records[2], {"event": "teleported", "sg_event_id": "z"}, records[5]]).encode()
    response = client.post("/webhooks/sendgrid", content=mixed, headers=keys.sendgrid_headers(mixed))
    assert response.status_code == 200
    assert response.json()["accepted"] == 2 and response.json()["rejected"][0]["index"] == 1
    huge = b"[" + b" " * (11 * 1024 * 1024) + b"]"
    assert client.post("/webhooks/sendgrid", content=huge).status_code == 413

    mailgun = keys.mailgun_body(load_fixture("mailgun_opened.json"))
    assert client.post("/webhooks/mailgun", content=mailgun).status_code == 200
    replay = client.post("/webhooks/mailgun", content=mailgun)
    assert replay.status_code == 403 and "replayed" in replay.json()["detail"]
    forged = json.loads(mailgun)
    forged["event-data"]["id"] = "forged"
    forged["signature"]["token"] = "0" * 50
    assert client.post("/webhooks/mailgun", json=forged).status_code == 403
    assert client.post("/webhooks/mailgun", content=b"token=x&timestamp=1").status_code == 400

    record = load_fixture("ses_events.json")[0]
    wrong_host = keys.sns.notification(record, cert_url="https://sns.evil.example/cert.pem")
    assert client.post("/webhooks/ses", content=wrong_host).status_code == 403
    assert client.post("/webhooks/ses", content=b'{"Type": "Nope"}').status_code == 400

    klaviyo = (FIXTURES / "klaviyo_webhook.json").read_bytes()
    assert client.post("/webhooks/klaviyo", content=klaviyo).status_code == 401
    mismatched = keys.klaviyo_headers(klaviyo, "another-webhook")
    assert client.post("/webhooks/klaviyo", content=klaviyo, headers=mismatched).status_code == 403

    rows = landed(settings, ch)
    assert set(rows) == {f"sendgrid:{records[2]['sg_event_id']}", f"sendgrid:{records[5]['sg_event_id']}",
                         f"mailgun:{load_fixture('mailgun_opened.json')['event-data']['id']}"}


def test_sns_subscription_confirmation_is_confirmed(client, keys) -> None:
    body = keys.sns.resign(load_fixture("sns_subscription_confirmation.json"))
    response = client.post("/webhooks/ses", content=body)
    assert response.status_code == 200 and response.json() == {
        "accepted": 0, "sns": "SubscriptionConfirmation", "confirmed": True}
    assert client.confirmed == [json.loads(body)["SubscribeURL"]]


def test_events_route_needs_its_token_when_configured(settings) -> None:
    app = create_app(settings.model_copy(update={"webhooks_events_token": "t0ken"}))
    event = json.loads((FIXTURES / "native_events.jsonl").read_text().splitlines()[0])
    with TestClient(app) as client:
        assert client.post("/webhooks/events", json=event).status_code == 401
        assert client.post("/webhooks/events", json=event, headers={"Authorization": "Bearer nope"}).status_code == 403
        ok = client.post("/webhooks/events", json=event, headers={"Authorization": "Bearer t0ken"})
        assert ok.status_code == 200 and ok.json()["accepted"] == 1


def test_unreachable_kafka_answers_503(settings) -> None:
    down = settings.model_copy(update={"kafka_bootstrap_servers": f"127.0.0.1:{free_port()}",
                                       "webhooks_produce_timeout_seconds": 3})
    body = json.dumps(load_fixture("sendgrid_events.json")).encode()
    with TestClient(create_app(down)) as client:
        response = client.post("/webhooks/sendgrid", content=body)
    assert response.status_code == 503 and "not confirmed" in response.json()["detail"]
