"""Issue 16 on the webhook receiver and the connectors: H1 (SNS accepts any AWS account), H2 (open routes),
M1 (loose SNS certificate checks), M2 (500s from out-of-range times and bad certificate URLs), M3 (unbounded
work and answers) and the L items. Each attack is made here as an attacker would make it; the receiver runs
on the real broker, events are checked where they land (the events table, through real ingestion)."""

from __future__ import annotations

import asyncio
import http.server
import json
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from fastapi.testclient import TestClient
from pydantic import ValidationError
from test_connectors_support import (
    FIXTURES,
    ISSUER_URL,
    SNS_TOPICS,
    TOPIC_ARN,
    SnsPki,
    SnsSigner,
    WebhookKeys,
    cert_url,
    load_fixture,
)

from sendflowr import cli
from sendflowr.connectors import FORMATS, sns
from sendflowr.connectors.signatures import MailgunVerifier, SignatureRejected
from sendflowr.errors import SendflowrError
from sendflowr.ingest import IngestOptions, ingest_once
from sendflowr.settings import Settings
from sendflowr_webhooks.app import LISTED_REJECTS, create_app

pytestmark = pytest.mark.integration
FOREIGN_TOPIC = "arn:aws:sns:us-east-1:999999999999:attacker-topic"
OUT_OF_RANGE = "0001-01-01T00:00:00+01:00"  # before year 1 once converted to UTC


def landed(settings, ch) -> dict[str, dict]:
    ingest_once(settings, ch, IngestOptions(until_caught_up=True), log=lambda _line: None)
    rows = ch.query(f"SELECT event_id, url, user_agent, email FROM {settings.clickhouse_database}.events")
    return {row["event_id"]: row for row in rows.named_results()}


def receiver(settings: Settings, signer: SnsSigner | None = None, confirmed: list | None = None, **update):
    hooks = {}
    if signer is not None:
        hooks = {"sns_fetch": signer.fetch, "sns_roots": signer.roots}
    if confirmed is not None:
        hooks["sns_confirm"] = confirmed.append
    return TestClient(create_app(settings.model_copy(update={"webhooks_produce_timeout_seconds": 60, **update}),
                                 **hooks))


def native_event(event_id: str, **fields) -> dict:
    return {"event_id": event_id, "event_type": "opened", "occurred_at": "2024-03-01T09:30:00Z",
            "identifiers": {"email": "pat@example.org"}, **fields}


# --------------------------------------------------------------------------- H1: SNS trusts only its topics


def test_sns_without_a_topic_allow_list_confirms_and_accepts_nothing(settings, ch) -> None:
    """A real AWS account's own topic signs validly; without an allow-list the receiver confirmed it and then
    took its forged SES events."""
    signer = SnsSigner()
    confirmed: list[str] = []
    confirmation = {**load_fixture("sns_subscription_confirmation.json"), "TopicArn": FOREIGN_TOPIC,
                    "SubscribeURL": f"https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn="
                                    f"{FOREIGN_TOPIC}&Token=x"}
    forged_open = signer.notification(load_fixture("ses_events.json")[2], topic_arn=FOREIGN_TOPIC)
    with receiver(settings, signer, confirmed) as client:  # the default: SENDFLOWR_SNS_TOPIC_ARNS empty
        for body in (signer.resign(confirmation), forged_open,
                     signer.notification(load_fixture("ses_events.json")[2])):  # even our own topic: not listed
            response = client.post("/webhooks/ses", content=body)
            assert response.status_code == 403 and "SENDFLOWR_SNS_TOPIC_ARNS" in response.json()["detail"]
    assert confirmed == [] and signer.fetched == []  # nothing visited, not even the certificate
    with receiver(settings, signer, confirmed, sns_topic_arns=TOPIC_ARN) as client:
        assert client.post("/webhooks/ses", content=forged_open).status_code == 403
        assert client.post("/webhooks/ses", content=signer.resign(confirmation)).status_code == 403
        ours = client.post("/webhooks/ses", content=signer.notification(load_fixture("ses_events.json")[2]))
        assert ours.status_code == 200 and ours.json()["accepted"] == 1
    with receiver(settings, signer, confirmed, sns_topic_arns="*") as client:  # the explicit opt-out
        assert client.post("/webhooks/ses", content=forged_open).status_code == 200
    with receiver(settings, None, confirmed, sns_topic_arns=TOPIC_ARN, sns_verify_signatures=False) as client:
        assert client.post("/webhooks/ses", content=forged_open).status_code == 403  # the list holds unsigned too
    assert confirmed == []
    assert len([e for e in landed(settings, ch) if e.startswith("ses:")]) == 1  # one Open, posted twice


# ------------------------------------------------------------------------------ H2: closed by default


def test_receiver_refuses_to_start_on_a_public_address_with_open_routes(settings) -> None:
    public = {"webhooks_host": "0.0.0.0"}
    with pytest.raises(SendflowrError) as refused, receiver(settings, **public):
        pass
    for route in ("sendgrid", "mailgun", "ses", "klaviyo", "events"):
        assert route in str(refused.value)
    keys = WebhookKeys()
    closed = {**public, **keys.settings_update(), "webhooks_events_token": "t0ken"}
    with receiver(settings, keys.sns, **closed) as client:
        assert client.get("/healthz").status_code == 200
    only_sendgrid = {**public, "sendgrid_verification_key": keys.sendgrid_public, "webhooks_routes": "sendgrid"}
    with receiver(settings, **only_sendgrid) as client:
        assert client.post("/webhooks/events", json=native_event("x")).status_code == 404
    with receiver(settings, **public, webhooks_allow_unauthenticated=True) as client:  # documented opt-out
        assert client.get("/healthz").status_code == 200


def test_an_open_route_reached_over_the_network_is_refused(settings) -> None:
    """Whatever the settings said: a request that arrived on a non-loopback address finds no open route."""
    app = create_app(settings)
    with TestClient(app, base_url="http://10.1.2.3:8001") as remote:
        response = remote.post("/webhooks/events", json=native_event("remote-1"))
        assert response.status_code == 403 and "loopback only" in response.json()["detail"]
    with TestClient(app, base_url="http://127.0.0.1:8001") as local:
        assert local.post("/webhooks/events", json=native_event("local-1")).status_code == 200


def test_a_web_page_cannot_post_events(settings, ch) -> None:
    """The request any page in the developer's browser can send to 127.0.0.1: text/plain, no preflight."""
    body = json.dumps(native_event("browser-1", identifiers={"email": "victim@example.com"})).encode()
    with receiver(settings) as client:
        for headers in ({"Origin": "http://evil.example", "Content-Type": "text/plain"},
                        {"Origin": "null", "Content-Type": "text/plain"},
                        {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"}):
            for route in ("events", "sendgrid", "klaviyo"):
                assert client.post(f"/webhooks/{route}", content=body, headers=headers).status_code == 403
        assert client.post("/webhooks/events", content=body).status_code == 200  # curl / an ESP: no Origin
    assert set(landed(settings, ch)) == {"browser-1"}


def test_events_route_cannot_claim_provider_ids(settings, ch) -> None:
    """An id in a connector's namespace would make ingestion drop the provider's real event as a duplicate."""
    mine = [native_event(f"{ns}:aaaaaaaa") for ns in ("sendgrid", "mailgun", "ses", "klaviyo")]
    with receiver(settings) as client:
        response = client.post("/webhooks/events", json=[*mine, native_event("crm-9")])
    assert response.status_code == 200 and response.json()["accepted"] == 1
    assert [r["reason"] for r in response.json()["rejected"]] == [
        f"event_id: the `{ns}:` namespace belongs to the {ns} connector" for ns in
        ("sendgrid", "mailgun", "ses", "klaviyo")]
    assert set(landed(settings, ch)) == {"crm-9"}


# ------------------------------------------------------------------ M1: the SNS certificate, strictly


def sns_verify(signer: SnsSigner, url: str, **kwargs) -> None:
    envelope = sns.parse_envelope(signer.notification(load_fixture("ses_events.json")[0], cert_url=url))
    signer.verifier(**kwargs).verify(envelope)


@pytest.mark.parametrize("url", [
    "https://sns.s3.amazonaws.com/SimpleNotificationService-0000.pem",  # an S3 host matched the old pattern
    "https://sns.us-west-2.amazonaws.com/SimpleNotificationService-0000.pem",  # not the topic's region
    "https://sns.us-east-1.amazonaws.com.cn/SimpleNotificationService-0000.pem",  # not the topic's partition
    "https://attacker@sns.us-east-1.amazonaws.com/SimpleNotificationService-0000.pem",
    "https://sns.us-east-1.amazonaws.com:443/SimpleNotificationService-0000.pem",
    "https://sns.us-east-1.amazonaws.com:99999/SimpleNotificationService-0000.pem",  # was a ValueError -> 500
    "https://[sns.us-east-1.amazonaws.com/SimpleNotificationService-0000.pem",  # was a ValueError -> 500
    "https://sns.us-east-1.amazonaws.com/certificate.txt",
    "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-0000.pem?redirect=evil",
    "https://sns.us-east-1.amazonaws.com/attacker/SimpleNotificationService-0000.pem",
])
def test_certificate_urls_outside_the_topics_sns_host_are_never_fetched(url: str) -> None:
    signer = SnsSigner()
    with pytest.raises(SignatureRejected):
        sns_verify(signer, url)
    assert signer.fetched == []


def test_certificates_must_chain_to_amazon(tmp_path: Path) -> None:
    trusted = SnsPki()
    good = SnsSigner(pki=trusted)
    sns_verify(good, cert_url(TOPIC_ARN))
    assert good.fetched == [cert_url(TOPIC_ARN), ISSUER_URL]  # the intermediate came from its AIA URL
    for forged in (SnsSigner(self_signed=True),  # CN=sns.amazonaws.com, signed by itself: passed before
                   SnsSigner()):  # a proper chain to a root that is not trusted here
        forged.pki.root = trusted.root  # the verifier trusts `trusted` only
        with pytest.raises(SignatureRejected, match="does not chain"):
            sns_verify(forged, cert_url(TOPIC_ARN))
    expired = SnsSigner(pki=trusted)
    expired.pem = trusted.leaf(expired.key, days=-1).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(SignatureRejected, match="does not chain"):
        sns_verify(expired, cert_url(TOPIC_ARN))
    roots = sns.amazon_roots()  # the default trust: Amazon's roots from certifi's maintained bundle
    assert roots and all("O=Amazon" in r.subject.rfc4514_string() for r in roots)
    with pytest.raises(SignatureRejected, match="does not chain"):
        envelope = sns.parse_envelope(good.notification(load_fixture("ses_events.json")[0]))
        sns.SnsVerifier(("*",), fetch=good.fetch).verify(envelope)  # a test CA is not Amazon


def test_certificate_failures_are_cached_briefly() -> None:
    signer = SnsSigner(self_signed=True)
    now = [1_000_000.0]
    verifier = signer.verifier(clock=lambda: now[0])
    envelope = sns.parse_envelope(signer.notification(load_fixture("ses_events.json")[0]))
    for _ in range(5):
        with pytest.raises(SignatureRejected):
            verifier.verify(envelope)
    assert signer.fetched.count(cert_url(TOPIC_ARN)) == 1  # one fetch, not one per forged message
    now[0] += sns.FAILURE_TTL_SECONDS + 1
    with pytest.raises(SignatureRejected):
        verifier.verify(envelope)
    assert signer.fetched.count(cert_url(TOPIC_ARN)) == 2


def test_certificate_downloads_follow_no_redirect() -> None:
    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/cert.pem":
                self.send_response(302)
                self.send_header("Location", "/elsewhere")
                self.end_headers()
            else:
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"followed")

        def log_message(self, *_args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with pytest.raises(OSError, match="redirect"):
            sns._download(f"http://127.0.0.1:{server.server_address[1]}/cert.pem")
    finally:
        server.shutdown()
        server.server_close()


def test_bad_certificate_urls_are_a_403_not_a_500(settings) -> None:
    keys = WebhookKeys()
    with receiver(settings, keys.sns, sns_topic_arns=SNS_TOPICS) as client:
        for url in ("https://sns.us-east-1.amazonaws.com:99999/SimpleNotificationService-1.pem",
                    "https://[oops/SimpleNotificationService-1.pem", "https://sns.s3.amazonaws.com/x.pem"):
            response = client.post("/webhooks/ses", content=keys.sns.notification(load_fixture("ses_events.json")[0],
                                                                                  cert_url=url))
            assert response.status_code == 403, response.text
    assert keys.sns.fetched == []


# ----------------------------------------------------------- M2: out-of-range times are rejects, not 500s


def test_out_of_range_offsets_are_rejected_records_and_good_ones_land(settings, ch, monkeypatch, capsys,
                                                                      tmp_path: Path) -> None:
    keys = WebhookKeys()
    ses_open = load_fixture("ses_events.json")[2]
    bad_open = {**ses_open, "open": {**ses_open["open"], "timestamp": OUT_OF_RANGE}}
    klaviyo = load_fixture("klaviyo_webhook.json")
    bad_item = json.loads(json.dumps(klaviyo["data"][1]))
    bad_item["payload"]["data"]["attributes"]["datetime"] = OUT_OF_RANGE
    bad_item["payload"]["data"]["attributes"].pop("timestamp")
    klaviyo_body = json.dumps({**klaviyo, "data": [klaviyo["data"][0], bad_item]}).encode()
    with receiver(settings, keys.sns, **keys.settings_update()) as client:
        response = client.post("/webhooks/ses", content=keys.sns.notification(bad_open))
        assert response.status_code == 422 and "timestamp" in response.json()["rejected"][0]["reason"]
        response = client.post("/webhooks/klaviyo", content=klaviyo_body,
                               headers=keys.klaviyo_headers(klaviyo_body, klaviyo["meta"]["klaviyo_webhook_id"]))
        assert response.status_code == 200 and response.json()["accepted"] == 1
        assert response.json()["rejected"][0]["index"] == 1
        for moment in (OUT_OF_RANGE, "9999-12-31T23:59:59-01:00"):
            response = client.post("/webhooks/events", json=[native_event("ok-1"),
                                                             native_event("bad-1", occurred_at=moment)])
            assert response.status_code == 200 and response.json()["rejected"][0]["index"] == 1
    exported = tmp_path / "native.jsonl"
    exported.write_text(json.dumps(native_event("ok-2")) + "\n" + json.dumps(
        native_event("bad-2", occurred_at=OUT_OF_RANGE)) + "\n")
    for name, value in settings.as_env().items():
        monkeypatch.setenv(name, value)
    assert cli.main(["import", "--no-progress", "--format", "native", str(exported)]) == 1  # rejects, no crash
    assert "rejected" in capsys.readouterr().out
    assert {"ok-1", "ok-2", "klaviyo:4UxDmyTJPn7"} <= set(landed(settings, ch))


# ------------------------------------------------------------ M3: bounded work, bounded answers, no stall


def test_hostile_batches_get_small_answers(settings) -> None:
    with receiver(settings) as client:
        two_megabytes = b"[" + b"{}," * 700_000 + b"{}]"
        response = client.post("/webhooks/sendgrid", content=two_megabytes)
        assert response.status_code == 413 and len(response.content) < 1024  # was a 68 MB 422
        junk = json.dumps([{"event": "open", "email": "a@b.c", "timestamp": i} for i in range(9000)]).encode()
        response = client.post("/webhooks/sendgrid", content=junk)
        assert response.status_code == 422
        answer = response.json()
        assert len(answer["rejected"]) == LISTED_REJECTS and answer["rejected_total"] == 9000
        assert len(response.content) < 32 * 1024
        too_many = [native_event(f"n-{i}") for i in range(settings.webhooks_max_records + 1)]
        assert client.post("/webhooks/events", json=too_many).status_code == 413


def test_mapping_runs_off_the_event_loop(settings, monkeypatch) -> None:
    seen = []
    original = FORMATS["sendgrid"]

    def spy(records, now=None):
        try:
            asyncio.get_running_loop()
            seen.append("on the event loop")
        except RuntimeError:
            seen.append("in a worker thread")
        return original(records, now)

    monkeypatch.setitem(FORMATS, "sendgrid", spy)
    with receiver(settings) as client:
        body = json.dumps(load_fixture("sendgrid_events.json")).encode()
        assert client.post("/webhooks/sendgrid", content=body).status_code == 200
    assert seen == ["in a worker thread"]


# --------------------------------------------------------------------------------------------- L items


MAILGUN_CHECK = """
import sys
from sendflowr.connectors.signatures import MailgunVerifier, SignatureRejected
block = dict(zip(("timestamp", "token", "signature"), sys.argv[3:6]))
try:
    MailgunVerifier(sys.argv[1], float(sys.argv[6]), __import__("pathlib").Path(sys.argv[2])).verify(block)
    print("accepted")
except SignatureRejected as exc:
    print("rejected:", exc.reason)
"""


def test_mailgun_tokens_are_honoured_once_across_processes_and_without_an_age_check(tmp_path: Path) -> None:
    import hashlib
    import hmac

    key, ledger = "key-0123456789", tmp_path / "mailgun-tokens.sqlite3"

    def block(token: str) -> dict:
        stamp = str(int(time.time()))
        return {"timestamp": stamp, "token": token,
                "signature": hmac.new(key.encode(), (stamp + token).encode(), hashlib.sha256).hexdigest()}

    first = block("t" * 50)
    MailgunVerifier(key, 900, ledger).verify(first)  # one receiver process...
    other = subprocess.run([sys.executable, "-c", MAILGUN_CHECK, key, str(ledger), first["timestamp"], first["token"],
                            first["signature"], "900"], capture_output=True, text=True, check=True)
    assert other.stdout.startswith("rejected: Mailgun token was already used"), other  # ...and another
    no_age = MailgunVerifier(key, 0, tmp_path / "no-age.sqlite3")  # max age 0: the replay check stays on
    second = block("u" * 50)
    no_age.verify(second)
    with pytest.raises(SignatureRejected, match="already used"):
        no_age.verify(second)


def test_klaviyo_webhook_id_is_required_when_signatures_are_checked(settings) -> None:
    keys = WebhookKeys()
    body = (FIXTURES / "klaviyo_webhook.json").read_bytes()
    webhook_id = load_fixture("klaviyo_webhook.json")["meta"]["klaviyo_webhook_id"]
    no_meta = json.dumps({"data": load_fixture("klaviyo_webhook.json")["data"]}).encode()
    with receiver(settings, **keys.settings_update()) as client:
        headers = keys.klaviyo_headers(body, webhook_id)
        del headers["Klaviyo-Webhook-Id"]
        assert client.post("/webhooks/klaviyo", content=body, headers=headers).status_code == 401
        response = client.post("/webhooks/klaviyo", content=no_meta, headers=keys.klaviyo_headers(no_meta, "x"))
        assert response.status_code == 401
        ok = client.post("/webhooks/klaviyo", content=body, headers=keys.klaviyo_headers(body, webhook_id))
        assert ok.status_code == 200


def test_ses_engagement_is_not_credited_to_every_recipient() -> None:
    records = load_fixture("ses_events.json")
    shared = ["alice@example.com", "bob@example.com", "carol@example.com"]
    batch = [{**r, "mail": {**r["mail"], "destination": shared}} for r in records if r["eventType"] in
             ("Open", "Click", "Send")]
    result = FORMATS["ses"](batch)
    assert sorted(e["event_type"] for e in result.events) == ["sent"] * 3  # a send does reach all three
    assert [reason for _, reason in result.rejects] == [
        "mail.destination: 3 recipients, and SES does not say which one opened (one recipient per message is "
        "needed to track engagement)",
        "mail.destination: 3 recipients, and SES does not say which one clicked (one recipient per message is "
        "needed to track engagement)"]


def test_secrets_never_show_in_reprs_logs_or_errors() -> None:
    settings = Settings(api_key="k-secret-1", clickhouse_password="p-secret-2", mailgun_signing_key="m-secret-3",
                        klaviyo_webhook_secret="kl-secret-4", webhooks_events_token="t-secret-5")
    shown = repr(settings) + str(settings) + str(settings.model_dump())
    for secret in ("k-secret-1", "p-secret-2", "m-secret-3", "kl-secret-4", "t-secret-5"):
        assert secret not in shown
    env = settings.as_env()  # a child process still gets the real values
    assert env["SENDFLOWR_API_KEY"] == "k-secret-1" and env["SENDFLOWR_MAILGUN_SIGNING_KEY"] == "m-secret-3"


@pytest.mark.parametrize("name", ["sendflowr; DROP TABLE x", "a.b", "`x`", "1abc", "", "x" * 65, "naïve"])
def test_database_name_must_be_an_identifier(name: str, monkeypatch, capsys) -> None:
    with pytest.raises(ValidationError, match="plain identifier"):
        Settings(clickhouse_database=name)
    monkeypatch.setenv("SENDFLOWR_CLICKHOUSE_DATABASE", name)
    assert cli.main(["clickhouse", "status"]) == 2
    assert "SENDFLOWR_CLICKHOUSE_DATABASE" in capsys.readouterr().err


def test_over_long_optional_fields_are_cut_and_counted_never_the_event_lost(settings, ch) -> None:
    keys = WebhookKeys()
    long_url, long_agent = "https://example.com/" + "u" * 3000, "Mozilla/" + "a" * 2000
    sendgrid = [{**load_fixture("sendgrid_events.json")[5], "sg_event_id": "long-1", "url": long_url,
                 "useragent": long_agent}]
    mailgun = json.loads(json.dumps(load_fixture("mailgun_clicked.json")))
    mailgun["event-data"].update({"id": "long-2", "url": long_url, "ip": "9" * 100})
    ses_click = load_fixture("ses_events.json")[3]
    ses_click = {**ses_click, "click": {**ses_click["click"], "link": long_url, "userAgent": long_agent}}
    native = native_event("long-3", event_type="clicked", url=long_url, user_agent=long_agent,
                          campaign_id="c" * 300)
    with receiver(settings, keys.sns, sns_topic_arns=SNS_TOPICS) as client:
        answers = [client.post("/webhooks/sendgrid", json=sendgrid), client.post("/webhooks/mailgun", json=mailgun),
                   client.post("/webhooks/ses", content=keys.sns.notification(ses_click)),
                   client.post("/webhooks/events", json=native)]
    for answer in answers:
        assert answer.status_code == 200 and answer.json()["accepted"] == 1, answer.text
        assert answer.json()["trimmed"]["url: truncated to 2048 characters"] == 1
    assert answers[1].json()["trimmed"]["ip: left out, longer than 64 characters"] == 1
    assert answers[3].json()["trimmed"]["campaign_id: left out, longer than 256 characters"] == 1
    rows = landed(settings, ch)
    ses_id = next(e for e in rows if e.startswith("ses:"))
    for event_id in ("sendgrid:long-1", "mailgun:long-2", ses_id, "long-3"):
        assert rows[event_id]["url"] == long_url[:2048]
    for event_id in ("sendgrid:long-1", ses_id, "long-3"):
        assert rows[event_id]["user_agent"] == long_agent[:1024]


def test_fresh_events_still_land_after_all_of_it(settings, ch) -> None:
    """The closed defaults still take a normal post on loopback (what `make demo` and the docs show)."""
    now = datetime.now(UTC) - timedelta(minutes=1)
    with receiver(settings) as client:
        response = client.post("/webhooks/events", json=native_event(
            "fresh-1", occurred_at=now.isoformat(timespec="seconds")))
    assert response.status_code == 200 and set(landed(settings, ch)) == {"fresh-1"}
