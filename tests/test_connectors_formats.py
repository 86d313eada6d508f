"""Provider payloads (the documented examples in tests/fixtures/connectors) mapped to our contract."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sendflowr.connectors import FORMATS
from sendflowr.connectors.common import contract_problem, epoch_to_rfc3339
from sendflowr.events import event_errors, validate_event

FIXTURES = Path(__file__).parent / "fixtures" / "connectors"
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def load(name: str):
    return json.loads((FIXTURES / name).read_text())


def by_id(events):
    return {e["event_id"]: e for e in events}


def test_sendgrid_documented_events_map_to_the_contract() -> None:
    records = load("sendgrid_events.json")
    result = FORMATS["sendgrid"](records, NOW)
    assert result.rejects == []
    assert dict(result.skipped) == {"sendgrid:deferred": 1, "sendgrid:group_resubscribe": 1}
    events = by_id(result.events)
    assert len(events) == len(records) - 2
    for event in result.events:
        assert validate_event(event, NOW) is event
        assert event["esp"] == "sendgrid" and event["identifiers"] == {"email": "example@test.com"}
        assert event["message_id"].startswith("14c5d75ce93.dfd.64b469.filter0001")
    types = {e["event_id"].split(":", 1)[1]: e["event_type"] for e in result.events}
    assert types == {
        "rbtnWrG1DVDGGGFHFyun0A==": "sent", "rWVYmVk90MjZJ9iohOBa3w==": "delivered",
        "FOTFFO0ecsBE-zxFXfs6WA==": "opened", "Ty6dF2gHs1QMvCzPmNhE4g==": "opened",
        "kCAi1KttyQdEKHhdC-nuEA==": "clicked", "6g4ZI7SA-xmRDv57GoPIPw==": "bounced",
        "b8qAH9bqTVCXCzeV0hGnZw==": "bounced", "zmzJhfJgAfUSOW80yEbPyw==": "bounced",
        "37nvH5QBz858KGVYCM4uOA==": "complained", "zz_BjPgU_5pS-J8vlfB1sg==": "unsubscribed",
        "ahSCB7xYcXFb-hEaawsPRw==": "unsubscribed",
    }
    assert events["sendgrid:FOTFFO0ecsBE-zxFXfs6WA=="]["machine_open"] is False
    assert events["sendgrid:Ty6dF2gHs1QMvCzPmNhE4g=="]["machine_open"] is True
    assert events["sendgrid:FOTFFO0ecsBE-zxFXfs6WA=="]["occurred_at"] == "2017-12-15T00:59:29.000Z"
    assert events["sendgrid:FOTFFO0ecsBE-zxFXfs6WA=="]["ip"] == "255.255.255.255"
    assert events["sendgrid:kCAi1KttyQdEKHhdC-nuEA=="]["url"] == "http://www.sendgrid.com/"
    assert [events[f"sendgrid:{i}"]["bounce_type"] for i in
            ("6g4ZI7SA-xmRDv57GoPIPw==", "b8qAH9bqTVCXCzeV0hGnZw==", "zmzJhfJgAfUSOW80yEbPyw==")] == [
        "hard", "soft", "dropped"]
    assert "machine_open" not in events["sendgrid:rWVYmVk90MjZJ9iohOBa3w=="]


@pytest.mark.parametrize(("name", "event_type", "extra"), [
    ("mailgun_delivered.json", "delivered", {"occurred_at": "2018-03-19T15:11:02.908Z"}),
    ("mailgun_opened.json", "opened", {"machine_open": False, "ip": "50.56.129.169"}),
    ("mailgun_opened_apple.json", "opened", {"machine_open": True}),
    ("mailgun_clicked.json", "clicked", {"bot_click": False, "url": "https://example.com/"}),
    ("mailgun_failed.json", "bounced", {"bounce_type": "hard"}),
    ("mailgun_unsubscribed.json", "unsubscribed", {}),
    ("mailgun_complained.json", "complained", {}),
])
def test_mailgun_documented_events_map_to_the_contract(name: str, event_type: str, extra: dict) -> None:
    body = load(name)
    result = FORMATS["mailgun"]([body], NOW)
    assert result.rejects == [] and len(result.events) == 1
    event = validate_event(result.events[0], NOW)
    assert event["event_type"] == event_type
    assert event["event_id"] == f"mailgun:{body['event-data']['id']}"
    assert event["identifiers"] == {"email": "alice@example.com"}
    assert event["message_id"] == body["event-data"]["message"]["headers"]["message-id"]
    for key, value in extra.items():
        assert event[key] == value
    # the bare event-data object (Events API export) maps to the same event
    assert FORMATS["mailgun"]([body["event-data"]], NOW).events == result.events


def test_mailgun_temporary_failure_is_a_soft_bounce() -> None:
    body = load("mailgun_failed.json")
    body["event-data"]["severity"] = "temporary"
    assert FORMATS["mailgun"]([body], NOW).events[0]["bounce_type"] == "soft"


def test_ses_documented_records_map_to_the_contract() -> None:
    records = load("ses_events.json")
    result = FORMATS["ses"](records, NOW)
    assert result.rejects == []
    assert dict(result.skipped) == {"ses:DeliveryDelay": 1}
    kinds = [(records[s]["eventType"], e["event_type"]) for e, s in zip(result.events, result.sources, strict=True)]
    assert kinds == [("Send", "sent"), ("Delivery", "delivered"), ("Open", "opened"), ("Click", "clicked"),
                     ("Bounce", "bounced"), ("Complaint", "complained"), ("Reject", "bounced"),
                     ("Subscription", "unsubscribed")]
    for event in result.events:
        validate_event(event, NOW)
        assert event["esp"] == "ses" and event["event_id"].startswith("ses:")
    events = {e["event_type"] + (e.get("bounce_type") or ""): e for e in result.events}
    assert events["delivered"]["occurred_at"] == "2016-10-19T23:21:04.133Z"
    assert events["opened"]["ip"] == "192.0.2.1" and "iPhone" in events["opened"]["user_agent"]
    assert events["clicked"]["url"] == "http://docs.aws.amazon.com/ses/latest/DeveloperGuide/send-email-smtp.html"
    assert events["bouncedhard"]["identifiers"] == {"email": "recipient@example.com"}
    assert events["bounceddropped"]["identifiers"] == {"email": "sender@example.com"}
    assert len({e["event_id"] for e in result.events}) == len(result.events)
    # deterministic: a retry of the same record gives the same ids
    assert [e["event_id"] for e in FORMATS["ses"](records, NOW).events] == [e["event_id"] for e in result.events]


def test_ses_delivery_to_several_recipients_is_one_event_each() -> None:
    record = copy.deepcopy(load("ses_events.json")[1])
    record["delivery"]["recipients"] = ["a@example.com", "b@example.com"]
    result = FORMATS["ses"]([record], NOW)
    assert [e["identifiers"]["email"] for e in result.events] == ["a@example.com", "b@example.com"]
    assert result.sources == [0, 0] and len({e["event_id"] for e in result.events}) == 2


def test_klaviyo_webhook_items_map_to_the_contract() -> None:
    body = load("klaviyo_webhook.json")
    result = FORMATS["klaviyo"](body["data"], NOW)
    assert result.rejects == [] and dict(result.skipped) == {"klaviyo:sent_sms": 1}
    events = by_id(result.events)
    assert set(events) == {"klaviyo:4UxDmyTJPn7", "klaviyo:4UxDnA2fLxP", "klaviyo:4UxDqB7hMzQ"}
    for event in result.events:
        validate_event(event, NOW)
        assert event["identifiers"]["klaviyo_id"] == "01GDDKASAP8TKDDA2GRZDSVP4H"
        assert event["campaign_id"] == "01HF3Z0R3J5W0K8C4M1X2Y3Z4A"
    assert events["klaviyo:4UxDmyTJPn7"]["event_type"] == "delivered"
    assert events["klaviyo:4UxDmyTJPn7"]["identifiers"]["email"] == "sarah.mason@klaviyo-demo.com"
    assert events["klaviyo:4UxDnA2fLxP"]["event_type"] == "opened" and events["klaviyo:4UxDnA2fLxP"]["machine_open"]
    assert events["klaviyo:4UxDqB7hMzQ"]["url"] == "https://www.klaviyo-demo.com/shop"
    assert "email" not in events["klaviyo:4UxDqB7hMzQ"]["identifiers"]  # no profile included: id only
    assert events["klaviyo:4UxDqB7hMzQ"]["occurred_at"] == "2023-11-15T00:13:20.000Z"
    # a Get Events export line (the payload's data object) maps the same, by included metric name
    bare = dict(body["data"][1]["payload"]["data"])
    included = [{"type": "metric", "id": "Y6Hmxn", "attributes": {"name": "Opened Email"}}]
    assert FORMATS["klaviyo"]([{"data": bare, "included": included}], NOW).events[0]["event_type"] == "opened"


def test_bad_records_are_rejected_with_reasons_and_good_ones_kept() -> None:
    good = load("sendgrid_events.json")[2]
    batch = [
        good,
        {**good, "sg_event_id": None},
        {**good, "event": "teleported"},
        "not an object",
        {**good, "sg_event_id": "x1", "timestamp": "yesterday"},
        {**good, "sg_event_id": "x2", "timestamp": (NOW + timedelta(hours=1)).timestamp()},
        {**good, "sg_event_id": "x3", "timestamp": 900_000_000},
        {**good, "sg_event_id": "x4", "email": ""},
        {**good, "sg_event_id": "x5", "email": "a" * 400},
        {**good, "sg_event_id": "x6", "event": "click", "url": "u" * 3000},
        {**good, "sg_event_id": "i" * 250},
    ]
    result = FORMATS["sendgrid"](batch, NOW)
    # An over-long url costs its event nothing: cut to the contract's limit and counted.
    assert [e["event_id"] for e in result.events] == ["sendgrid:rWVYmVk90MjZJ9iohOBa3w==", "sendgrid:x6"]
    assert result.events[1]["url"] == "u" * 2048
    assert result.trimmed == {"url: truncated to 2048 characters": 1}
    reasons = dict(result.rejects)
    assert sorted(reasons) == [1, 2, 3, 4, 5, 6, 7, 8, 10]
    assert reasons[1].startswith("sg_event_id: missing")
    assert reasons[2] == "event: unknown SendGrid event type 'teleported'"
    assert reasons[3].startswith("record: expected a JSON object")
    assert reasons[4].startswith("timestamp:")
    assert reasons[5] == "occurred_at: more than 5 minutes in the future"
    assert reasons[6] == "occurred_at: before 2000-01-01"
    assert reasons[7] == "email: missing"
    assert reasons[8].startswith("identifiers.email: longer than 320")
    assert reasons[10] == "event_id: longer than 256 characters"
    for index, reason in reasons.items():  # the same verdicts the full contract check gives
        if index >= 5:
            event = {"event_id": "sendgrid:" + str(batch[index]["sg_event_id"]), "event_type": "clicked",
                     "occurred_at": epoch_to_rfc3339([batch[index]["timestamp"]])[0] or "x",
                     "identifiers": {"email": batch[index]["email"]} if batch[index]["email"] else {},
                     **({"url": batch[index]["url"]} if "url" in batch[index] else {})}
            assert event_errors(event, NOW), reason


def test_cheap_contract_check_agrees_with_the_validator() -> None:
    base = FORMATS["sendgrid"](load("sendgrid_events.json"), NOW).events[4]
    variants = [base]
    for key, value in [("url", "u" * 2049), ("url", "u" * 2048), ("ip", "1" * 65), ("user_agent", "a" * 1025),
                       ("event_id", "e" * 257), ("event_id", "e" * 256), ("occurred_at", "1999-12-31T23:59:59.999Z"),
                       ("occurred_at", "2026-01-01T00:05:00.000Z"), ("occurred_at", "2026-01-01T00:05:00.001Z"),
                       ("identifiers", {"email": "x" * 321}), ("identifiers", {"klaviyo_id": "k" * 128}),
                       ("identifiers", {"klaviyo_id": "k" * 129}), ("identifiers", {})]:
        variants.append({**base, key: value})
    for event in variants:
        assert (contract_problem(event, NOW) is None) == (event_errors(event, NOW) == []), event


def test_epoch_column_conversion() -> None:
    assert epoch_to_rfc3339([1513299569, "1521472262.908181", None, "x", True, float("nan"), 1e12]) == [
        "2017-12-15T00:59:29.000Z", "2018-03-19T15:11:02.908Z", None, None, None, None, None]


def test_native_events_are_validated_by_the_contract() -> None:
    lines = [json.loads(line) for line in (FIXTURES / "native_events.jsonl").read_text().splitlines()]
    result = FORMATS["native"](lines + [{"event_id": "x"}], NOW)
    assert result.events == lines
    assert result.rejects and result.rejects[0][0] == 2


JUNK = (None, 0, -1, 1e300, True, "", "x", "9" * 3000, [], [1], {}, {"a": 1})


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, (*prefix, index))


def _replaced(value, path, junk):
    if not path:
        return junk
    copy_ = copy.copy(value)
    copy_[path[0]] = _replaced(value[path[0]], path[1:], junk)
    return copy_


def _documented_records():
    yield "sendgrid", load("sendgrid_events.json")
    for name in ("mailgun_delivered.json", "mailgun_opened_apple.json", "mailgun_clicked.json", "mailgun_failed.json"):
        yield "mailgun", [load(name)]
    yield "ses", load("ses_events.json")
    yield "klaviyo", load("klaviyo_webhook.json")["data"]


def test_any_field_replaced_by_junk_is_a_reject_or_a_valid_event_never_a_crash() -> None:
    cases = 0
    for fmt, records in _documented_records():
        for record in records:
            for path in _paths(record):
                for junk in JUNK:
                    result = FORMATS[fmt]([_replaced(record, path, junk), record], NOW)
                    for event in result.events:
                        assert event_errors(event, NOW) == [], (fmt, path, junk, event)
                    assert all(source in (0, 1) for source in result.sources)
                    good = FORMATS[fmt]([record], NOW).events
                    assert result.events[len(result.events) - len(good):] == good  # the good neighbour is kept
                    cases += 1
    assert cases > 5000


def _sendgrid_batch(rng, size: int) -> list[dict]:
    """Realistic SendGrid records of every kind, as bench/connectors.py posts them."""
    now = int(NOW.timestamp())
    kinds = ("processed", "delivered", "open", "click", "bounce", "dropped", "unsubscribe", "group_unsubscribe",
             "spamreport", "deferred")
    records = []
    for i in range(size):
        kind = kinds[rng.randrange(len(kinds))]
        record = {"email": f"p{rng.randrange(50)}@example.com", "timestamp": now - rng.randrange(90 * 86400),
                  "event": kind, "sg_event_id": f"ev{i}-{rng.getrandbits(40):x}", "sg_message_id": f"m{i}.filter0",
                  "category": ["news"], rng.choice(("marketing_campaign_id", "singlesend_id")): str(rng.randrange(9))}
        if kind in ("open", "click"):
            record.update(useragent="Mozilla/5.0 (iPhone)", ip=f"203.0.113.{rng.randrange(256)}")
        if kind == "open":
            record["sg_machine_open"] = rng.choice((True, False, "true", 0))
        if kind == "click":
            record["url"] = f"https://shop.example.com/p/{rng.randrange(99)}?q=\u00e9"
        if kind == "bounce":
            record["type"] = rng.choice(("bounce", "blocked"))
        records.append(record)
    return records


def test_sendgrid_column_path_gives_exactly_the_record_path_events() -> None:
    from sendflowr.connectors import sendgrid
    from sendflowr.connectors.common import latest_allowed

    rng = __import__("random").Random(5)
    latest = latest_allowed(NOW)
    for _ in range(20):
        batch = _sendgrid_batch(rng, 300)
        clean, records = sendgrid._normalize_clean(batch, latest), sendgrid._normalize_records(batch, latest)
        assert clean is not None, "a usual batch takes the column path"
        assert (clean.events, clean.sources, clean.rejects, clean.skipped) == (
            records.events, records.sources, records.rejects, records.skipped)
        assert [list(e) for e in clean.events] == [list(e) for e in records.events]  # key order: same bytes
    # one unusual value anywhere sends the batch record by record, which gives that record its reason
    for key, junk in [("sg_event_id", None), ("email", ""), ("timestamp", "1513299569"), ("timestamp", True),
                      ("timestamp", int((NOW + timedelta(hours=1)).timestamp())), ("event", "teleported"),
                      ("event", ["open"]), ("sg_message_id", 7), ("marketing_campaign_id", "c" * 300),
                      ("useragent", "a" * 1025), ("url", {"u": 1}), ("email", "x" * 321)]:
        batch = _sendgrid_batch(rng, 50)
        target = next(i for i, r in enumerate(batch) if r["event"] == "click")
        batch[target] = {**batch[target], key: junk}
        assert sendgrid._normalize_clean(batch, latest) is None, (key, junk)
        result = FORMATS["sendgrid"](batch, NOW)
        assert result.events == sendgrid._normalize_records(batch, latest).events
        assert len(result.events) + len(result.rejects) + sum(result.skipped.values()) == 50
