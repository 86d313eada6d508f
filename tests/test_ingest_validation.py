"""The two validators of the event contract agree: ClickHouse's (ingest_staging DEFAULT columns, run on
every ingested message) and Python's (sendflowr.events.decode_event, used by producers, the API and tests).

Messages go through the real path: produced to Kafka, ingested by `ingest_once`, then each message's
SQL verdict (a row in `events` or in `rejected_events`) is compared with decode_event's verdict.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from sendflowr.events import EVENT_TYPES, IDENTIFIER_TYPES, MAX_EVENT_BYTES, InvalidEvent, decode_event
from sendflowr.ingest.run import ingest_once
from sendflowr.kafka_io import produce_all
from sendflowr.settings import Settings

pytestmark = pytest.mark.integration

RAW_CAP = 4096
NOW = datetime.now(UTC)
STRING_LIMITS = {"esp": 64, "message_id": 256, "campaign_id": 256, "user_agent": 1024, "ip": 64, "url": 2048}
IDENTIFIER_LIMITS = {"email": 320, "klaviyo_id": 128, "phone": 64, "external_id": 256}


def ts(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


# ------------------------------------------------------------------------------------------------ the corpus

_counter = iter(range(1_000_000))


def event(**fields: Any) -> dict[str, Any]:
    """A valid event with a unique event_id; keyword arguments override (a value of ... drops the field)."""
    base: dict[str, Any] = {
        "event_id": f"val-{next(_counter)}-{uuid.uuid4().hex[:6]}",
        "event_type": "opened",
        "occurred_at": ts(NOW - timedelta(hours=2)),
        "identifiers": {"email": "ada@example.com"},
    }
    base.update(fields)
    return {k: v for k, v in base.items() if v is not ...}


def enc(value: Any, ascii_only: bool = True) -> bytes:
    return json.dumps(value, ensure_ascii=ascii_only).encode()


def padded(value: dict[str, Any], size: int) -> bytes:
    """The event's JSON followed by whitespace up to exactly `size` bytes (still the same JSON value)."""
    text = enc(value)
    return text + b" " * (size - len(text))


def raw_event(body: str, **fields: Any) -> bytes:
    """A valid event's JSON with `body` spliced in as extra raw members (duplicates, odd escapes...)."""
    return b"{" + body.encode() + b"," + enc(event(**fields))[1:]


def corpus() -> list[tuple[str, bytes | None]]:
    later = NOW + timedelta(hours=1)
    cases: list[tuple[str, bytes | None]] = [
        # --- valid
        ("minimal", enc(event())),
        (
            "every optional field",
            enc(
                event(
                    schema_version=1,
                    esp="sendgrid",
                    message_id="m-1",
                    campaign_id="c-1",
                    user_agent="Mozilla/5.0",
                    ip="203.0.113.7",
                    url="https://example.com/a?b=c",
                    event_type="bounced",
                    bounce_type="hard",
                    machine_open=False,
                    bot_click=True,
                    identifiers={
                        "email": "Ada@Example.com",
                        "klaviyo_id": "01H",
                        "phone": "+15550100",
                        "external_id": "x",
                    },
                )
            ),
        ),
        (
            "non-ascii as utf-8",
            enc(event(esp="é" * 64, campaign_id="日本語", identifiers={"email": "ü@b.de"}), ascii_only=False),
        ),
        ("non-ascii escaped", enc(event(esp="😀" * 64, message_id='\u0000\t\n"\\'))),
        ("offset +05:30", enc(event(occurred_at="2024-05-01T10:00:00+05:30"))),
        ("offset -08:00", enc(event(occurred_at="2024-05-01T10:00:00.5-08:00"))),
        ("offset -00:00", enc(event(occurred_at="2024-05-01T10:00:00-00:00"))),
        ("nanoseconds", enc(event(occurred_at="2024-05-01T10:00:00.123456789Z"))),
        ("fraction rounds", enc(event(occurred_at="2024-05-01T10:00:00.9999Z"))),
        ("leap day", enc(event(occurred_at="2024-02-29T23:59:59Z"))),
        ("exactly 2000", enc(event(occurred_at="2000-01-01T00:00:00Z"))),
        ("exactly 2000 via offset", enc(event(occurred_at="2000-01-01T01:00:00+01:00"))),
        ("a minute ago", enc(event(occurred_at=ts(NOW - timedelta(minutes=1))))),
        ("schema_version 1.0", enc(event(schema_version=1.0))),
        ("schema_version 1e0", raw_event('"schema_version":1e0')),
        ("empty bounce_type", enc(event(bounce_type=""))),
        ("empty esp", enc(event(esp=""))),
        ("only klaviyo_id", enc(event(identifiers={"klaviyo_id": "k1"}))),
        ("only phone", enc(event(identifiers={"phone": "+4930123"}))),
        ("only external_id", enc(event(identifiers={"external_id": "ext-1"}))),
        ("event_id of 256", enc(event(event_id="v" * 240 + uuid.uuid4().hex[:16]))),
        ("strings at their limits", enc(event(**{f: "s" * n for f, n in STRING_LIMITS.items()}))),
        (
            "identifiers at their limits",
            enc(event(identifiers={f: "i" * n for f, n in IDENTIFIER_LIMITS.items()})),
        ),
        ("escaped key", raw_event('"machine_\\u006fpen":true', event_type="opened")),
        ("padded to 64 KiB", padded(event(), MAX_EVENT_BYTES)),
        ("surrounding whitespace", b"\n  " + enc(event()) + b"\r\n"),
        *[(f"type {t}", enc(event(event_type=t))) for t in EVENT_TYPES],
        # --- payload
        ("invalid JSON", b'{"event_id": "x", "event_type": '),
        ("trailing comma", enc(event())[:-1] + b",}"),
        ("single quotes", b"{'event_id': 'x'}"),
        ("trailing garbage", enc(event()) + b" x"),
        ("NaN", raw_event('"schema_version":NaN')),
        ("non-UTF-8 bytes", b"\xff\xfe\x00garbage"),
        ("non-UTF-8 inside a string", enc(event(esp="ESPX")).replace(b"ESPX", b"\xc3\x28")),
        ("overlong UTF-8", enc(event(esp="ESPX")).replace(b"ESPX", b"\xc0\xaf")),
        ("BOM", b"\xef\xbb\xbf" + enc(event())),
        ("oversized by one byte", padded(event(), MAX_EVENT_BYTES + 1)),
        ("oversized", enc(event(url="u" * 100_000))),
        ("empty payload", b""),
        ("tombstone", None),
        ("whitespace only", b"   "),
        ("deeply nested", b"[" * 5000 + b"]" * 5000),
        ("deeply nested field", raw_event('"esp":' + "[" * 3000 + "]" * 3000)),
        ("lone surrogate", raw_event('"message_id":"\\ud800"')),
        # --- not an object
        ("array", enc([event()])),
        ("string", enc("event")),
        ("number", b"42"),
        ("null", b"null"),
        ("true", b"true"),
        # --- missing and wrong-typed required fields
        *[
            (f"missing {f}", enc(event(**{f: ...})))
            for f in ("event_id", "event_type", "occurred_at", "identifiers")
        ],
        ("event_id number", enc(event(event_id=12345))),
        ("event_id null", enc(event(event_id=None))),
        ("event_id array", enc(event(event_id=["x"]))),
        ("event_id object", enc(event(event_id={"id": "x"}))),
        ("event_id empty", enc(event(event_id=""))),
        ("event_id of 257", enc(event(event_id="v" * 257))),
        ("event_type number", enc(event(event_type=3))),
        ("event_type null", enc(event(event_type=None))),
        ("occurred_at number", enc(event(occurred_at=1_700_000_000))),
        ("occurred_at null", enc(event(occurred_at=None))),
        ("identifiers string", enc(event(identifiers="ada@example.com"))),
        ("identifiers array", enc(event(identifiers=["ada@example.com"]))),
        ("identifiers null", enc(event(identifiers=None))),
        # --- event type
        ("unknown event type", enc(event(event_type="exploded"))),
        ("event type in capitals", enc(event(event_type="Opened"))),
        ("empty event type", enc(event(event_type=""))),
        # --- unknown fields
        ("unknown top-level field", enc(event(surprise=True))),
        ("unknown top-level null field", enc(event(extra=None))),
        ("empty top-level key", enc(event(**{"": "x"}))),
        ("empty identifier key", enc(event(identifiers={"email": "a@b.c", "": "x"}))),
        ("unknown identifier type", enc(event(identifiers={"email": "a@b.c", "twitter": "@ada"}))),
        ("empty identifiers", enc(event(identifiers={}))),
        ("empty identifier value", enc(event(identifiers={"email": ""}))),
        ("identifier number", enc(event(identifiers={"phone": 15550100}))),
        ("identifier null", enc(event(identifiers={"email": None}))),
        ("identifier object", enc(event(identifiers={"email": {"v": "a@b.c"}}))),
        # --- time
        ("naive timestamp", enc(event(occurred_at="2024-05-01T10:00:00"))),
        ("space separator", enc(event(occurred_at="2024-05-01 10:00:00Z"))),
        ("lower-case t and z", enc(event(occurred_at="2024-05-01t10:00:00z"))),
        ("date only", enc(event(occurred_at="2024-05-01"))),
        ("offset without colon", enc(event(occurred_at="2024-05-01T10:00:00+0530"))),
        ("ten fraction digits", enc(event(occurred_at="2024-05-01T10:00:00.1234567891Z"))),
        ("month 13", enc(event(occurred_at="2024-13-01T10:00:00Z"))),
        ("month 00", enc(event(occurred_at="2024-00-10T10:00:00Z"))),
        ("day 00", enc(event(occurred_at="2024-05-00T10:00:00Z"))),
        ("February 30", enc(event(occurred_at="2024-02-30T10:00:00Z"))),
        ("February 29 of 2023", enc(event(occurred_at="2023-02-29T10:00:00Z"))),
        ("April 31", enc(event(occurred_at="2024-04-31T10:00:00Z"))),
        ("hour 24", enc(event(occurred_at="2024-05-01T24:00:00Z"))),
        ("minute 61", enc(event(occurred_at="2024-05-01T10:61:00Z"))),
        ("second 60", enc(event(occurred_at="2024-06-30T23:59:60Z"))),
        ("offset hour 25", enc(event(occurred_at="2024-05-01T10:00:00+25:00"))),
        ("offset minute 60", enc(event(occurred_at="2024-05-01T10:00:00+05:60"))),
        ("before 2000", enc(event(occurred_at="1999-12-31T23:59:59.999Z"))),
        ("before 2000 via offset", enc(event(occurred_at="2000-01-01T00:30:00+01:00"))),
        ("1970", enc(event(occurred_at="1970-01-01T00:00:00Z"))),
        ("year 1", enc(event(occurred_at="0001-01-01T00:00:00Z"))),
        ("an hour in the future", enc(event(occurred_at=ts(later)))),
        ("ten years in the future", enc(event(occurred_at=ts(later + timedelta(days=3650))))),
        ("year 2300", enc(event(occurred_at="2300-01-01T00:00:00Z"))),
        ("year 9999", enc(event(occurred_at="9999-12-31T23:59:59Z"))),
        # --- optional fields
        ("bad bounce_type", enc(event(event_type="bounced", bounce_type="bogus"))),
        ("bounce_type in capitals", enc(event(event_type="bounced", bounce_type="HARD"))),
        ("bounce_type null", enc(event(bounce_type=None))),
        ("bounce_type number", enc(event(bounce_type=1))),
        ("machine_open string", enc(event(machine_open="true"))),
        ("machine_open number", enc(event(machine_open=1))),
        ("machine_open null", enc(event(machine_open=None))),
        ("bot_click string", enc(event(event_type="clicked", bot_click="yes"))),
        ("schema_version 2", enc(event(schema_version=2))),
        ("schema_version string", enc(event(schema_version="1"))),
        ("schema_version true", enc(event(schema_version=True))),
        ("schema_version 0", enc(event(schema_version=0))),
        ("schema_version 1.5", enc(event(schema_version=1.5))),
        ("schema_version null", enc(event(schema_version=None))),
        ("schema_version huge", raw_event('"schema_version":100000000000000000001')),
        *[(f"{f} over its limit", enc(event(**{f: "s" * (n + 1)}))) for f, n in STRING_LIMITS.items()],
        *[
            (f"identifiers.{f} over its limit", enc(event(identifiers={f: "i" * (n + 1)})))
            for f, n in IDENTIFIER_LIMITS.items()
        ],
        ("esp of 65 emoji", enc(event(esp="😀" * 65))),
        ("esp number", enc(event(esp=5))),
        ("message_id number", enc(event(message_id=1.5))),
        ("url number", enc(event(url=0))),
        ("ip number", enc(event(ip=127))),
        ("campaign_id null", enc(event(campaign_id=None))),
        ("user_agent array", enc(event(user_agent=["Mozilla"]))),
        # --- duplicate keys: one bad copy makes the event bad, whichever copy a parser keeps
        ("duplicate key, bad first", raw_event('"event_type":"exploded"', event_type="sent")),
        ("duplicate key, bad last", enc(event(event_type="sent"))[:-1] + b', "event_type": "exploded"}'),
        ("duplicate identifier", enc(event(identifiers={"email": "a@b.c"}))[:-2] + b', "email": ""}}'),
    ]
    labels = [label for label, _ in cases]
    assert len(labels) == len(set(labels))
    return cases


# ------------------------------------------------------------------------------------------------ round trip


@dataclass
class Verdicts:
    python: dict[str, str]  # label -> '' (valid) or InvalidEvent.reason
    sql: dict[str, str]  # label -> '' (in events) or rejected_events.reason
    problems: list[str]


def python_verdict(raw: bytes | None) -> str:
    try:
        decode_event(raw or b"")
    except InvalidEvent as exc:
        assert exc.reason, "InvalidEvent without a reason"
        return exc.reason
    return ""


def locate(settings: Settings, expected: int) -> dict[tuple[int, int], bytes | None]:
    """(partition, offset) -> value of every message in the test's topic, read back from Kafka."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "group.id": f"locate-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    found: dict[tuple[int, int], bytes | None] = {}
    try:
        consumer.assign(
            [TopicPartition(settings.kafka_topic, p, 0) for p in range(settings.kafka_partitions)]
        )
        deadline = time.monotonic() + 30
        while len(found) < expected:
            assert time.monotonic() < deadline, f"read back only {len(found)} of {expected} messages"
            for message in consumer.consume(num_messages=1000, timeout=0.5):
                assert message.error() is None, message.error()
                found[(message.partition(), message.offset())] = message.value()
    finally:
        consumer.close()
    return found


def round_trip(settings: Settings, ch, cases: list[tuple[str, bytes | None]]) -> Verdicts:
    """Produce every case, ingest once, and read back each message's fate in ClickHouse."""
    payloads = [raw for _, raw in cases]
    assert len(set(payloads)) == len(payloads), "each case needs distinct bytes to be found again"
    produce_all(settings, [(f"k{i}".encode(), raw) for i, raw in enumerate(payloads)])
    report = ingest_once(settings, ch, log=lambda _m: None)
    assert report.messages == len(cases) and report.duplicates == 0

    label_of = {raw: label for label, raw in cases}
    where = {label_of[value]: place for place, value in locate(settings, len(cases)).items()}
    db, topic = settings.clickhouse_database, settings.kafka_topic
    accepted = {
        (p, o): row
        for p, o, *row in ch.query(
            f"SELECT kafka_partition, kafka_offset, kafka_topic, event_id, event_type, "
            f"toUnixTimestamp64Milli(occurred_at), email, klaviyo_id, phone, external_id, esp, message_id, "
            f"campaign_id, user_agent, ip, url, bounce_type, machine_open, bot_click FROM {db}.events"
        ).result_rows
    }
    rejected = {
        (p, o): row
        for p, o, *row in ch.query(
            f"SELECT kafka_partition, kafka_offset, kafka_topic, reason, hex(raw), raw_size "
            f"FROM {db}.rejected_events"
        ).result_rows
    }
    assert len(accepted) + len(rejected) == len(cases)

    python, sql, problems = {}, {}, []
    for label, raw in cases:
        place, payload = where[label], raw or b""
        python[label] = python_verdict(raw)
        if place in rejected:
            row_topic, reason, raw_hex, raw_size = rejected[place]
            sql[label] = reason or "(empty reason)"
            if row_topic != topic:
                problems.append(f"{label}: rejected row names topic {row_topic!r}")
            if bytes.fromhex(raw_hex) != payload[:RAW_CAP]:
                problems.append(f"{label}: rejected raw is not the first {RAW_CAP} bytes of the message")
            if raw_size != len(payload):
                problems.append(f"{label}: raw_size {raw_size} != {len(payload)}")
        else:
            assert place in accepted, f"{label}: neither in events nor in rejected_events"
            sql[label] = ""
            if not python[label]:
                problems += mismatched_columns(label, json.loads(payload), accepted[place], topic)
    return Verdicts(python, sql, problems)


def mismatched_columns(label: str, event: dict[str, Any], row: list, topic: str) -> list[str]:
    """Where the stored row differs from what decode_event read out of the same message."""
    (
        row_topic,
        event_id,
        event_type,
        occurred_ms,
        email,
        klaviyo_id,
        phone,
        external_id,
        esp,
        message_id,
        campaign_id,
        user_agent,
        ip,
        url,
        bounce_type,
        machine_open,
        bot_click,
    ) = row
    ids = event["identifiers"]
    moment = datetime.fromisoformat(event["occurred_at"].replace("Z", "+00:00"))
    want = {
        "kafka_topic": topic,
        "event_id": event["event_id"],
        "event_type": event["event_type"],
        "occurred_at": int(moment.timestamp()) * 1000 + moment.microsecond // 1000,  # ms, truncated
        **{k: ids.get(k, "") for k in IDENTIFIER_TYPES},
        **{k: event.get(k, "") for k in STRING_LIMITS},
        "bounce_type": event.get("bounce_type", ""),
        "machine_open": int(event.get("machine_open", False)),
        "bot_click": int(event.get("bot_click", False)),
    }
    got = {
        "kafka_topic": row_topic,
        "event_id": event_id,
        "event_type": event_type,
        "occurred_at": occurred_ms,
        "email": email,
        "klaviyo_id": klaviyo_id,
        "phone": phone,
        "external_id": external_id,
        "esp": esp,
        "message_id": message_id,
        "campaign_id": campaign_id,
        "user_agent": user_agent,
        "ip": ip,
        "url": url,
        "bounce_type": bounce_type,
        "machine_open": machine_open,
        "bot_click": bot_click,
    }
    return [
        f"{label}: column {k} is {got[k]!r}, the message says {want[k]!r}" for k in want if got[k] != want[k]
    ]


def disagreements(verdicts: Verdicts) -> list[str]:
    return [
        f"{label}: python says {verdicts.python[label] or 'valid'!r}, "
        f"sql says {verdicts.sql[label] or 'valid'!r}"
        for label in verdicts.python
        if bool(verdicts.python[label]) != bool(verdicts.sql[label])
    ]


# ------------------------------------------------------------------------------------------------ tests


def test_sql_and_python_validators_agree_on_the_corpus(settings: Settings, ch) -> None:
    cases = corpus()
    verdicts = round_trip(settings, ch, cases)
    found = disagreements(verdicts)
    assert not found, "\n".join(found)
    assert not verdicts.problems, "\n".join(verdicts.problems)
    valid = [label for label, reason in verdicts.python.items() if not reason]
    assert len(valid) == 33 and len(cases) - len(valid) > 100  # the corpus is what it says it is
    assert ch.command(f"SELECT count() FROM {settings.clickhouse_database}.events") == len(valid)


# Field values for random events: mostly valid, sometimes each of the ways a field goes wrong.
def _text(min_size: int, max_size: int) -> st.SearchStrategy[str]:
    return st.text(min_size=min_size, max_size=max_size)


def _exact(length: int) -> st.SearchStrategy[str]:
    """Text of exactly `length` characters (a short drawn text repeated: long draws would overrun)."""
    return st.text(min_size=1, max_size=4).map(lambda s: (s * (length // len(s) + 1))[:length])


def _over(limit: int) -> st.SearchStrategy[str]:
    return st.integers(limit + 1, limit + 3).flatmap(_exact)


_junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.floats(allow_nan=False, allow_infinity=False),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def _moment(low: datetime, high: datetime) -> st.SearchStrategy[datetime]:
    return st.datetimes(min_value=low.replace(tzinfo=None), max_value=high.replace(tzinfo=None))


@st.composite
def _occurred_at(draw: st.DrawFn, kind: str = "valid") -> Any:
    if kind == "junk":
        return draw(_junk)
    if kind == "odd":
        return draw(
            st.sampled_from(
                [
                    "",
                    "yesterday",
                    "2024-05-01",
                    "2024-05-01 10:00:00Z",
                    "2024-13-01T00:00:00Z",
                    "2024-02-30T00:00:00Z",
                    "2024-05-01T10:00:00+0100",
                    "2024-05-01T25:00:00Z",
                    "2024-05-01T10:00:00+05:60",
                    "2024-05-01t10:00:00z",
                ]
            )
        )
    if kind == "before 2000":
        moment = draw(_moment(datetime(1900, 1, 1), datetime(1999, 12, 31, 12)))
    elif kind == "future":
        moment = draw(_moment(NOW + timedelta(hours=1), NOW + timedelta(days=3000)))
    else:
        moment = draw(_moment(datetime(2000, 1, 2), NOW - timedelta(hours=1)))
    minutes = draw(st.integers(-23 * 60 - 59, 23 * 60 + 59))
    local = moment + timedelta(minutes=minutes)
    digits = draw(st.sampled_from(["", ".1", ".12", ".123", ".123456", ".123456789"]))
    body = local.strftime("%Y-%m-%dT%H:%M:%S")
    if digits:
        body += "." + f"{local.microsecond:06d}000"[: len(digits) - 1]
    if kind == "naive":
        return body
    if minutes == 0 and draw(st.booleans()):
        return body + "Z"
    sign = "+" if minutes >= 0 else "-"  # local time = UTC + offset
    return body + f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def _valid_string(limit: int) -> st.SearchStrategy[str]:
    return st.one_of(_text(0, 16), _exact(limit))


def _valid_event() -> st.SearchStrategy[dict[str, Any]]:
    identifiers = st.dictionaries(st.sampled_from(IDENTIFIER_TYPES), st.just(""), min_size=1).flatmap(
        lambda keys: st.fixed_dictionaries(
            {k: st.one_of(_text(1, 24), _exact(IDENTIFIER_LIMITS[k])) for k in keys}
        )
    )
    return st.fixed_dictionaries(
        {
            "event_id": st.just("unique"),
            "event_type": st.sampled_from(EVENT_TYPES),
            "occurred_at": _occurred_at(),
            "identifiers": identifiers,
        },
        optional={
            **{name: _valid_string(limit) for name, limit in STRING_LIMITS.items()},
            "bounce_type": st.sampled_from(["hard", "soft", "dropped", ""]),
            "machine_open": st.booleans(),
            "bot_click": st.booleans(),
            "schema_version": st.sampled_from([1, 1.0]),
        },
    )


MUTATIONS = (
    "event_id",
    "event_type",
    "occurred_at",
    "identifiers",
    "identifier",
    *STRING_LIMITS,
    "bounce_type",
    "machine_open",
    "bot_click",
    "schema_version",
    "unknown field",
)


@st.composite
def event_like(draw: st.DrawFn) -> dict[str, Any]:
    """A valid random event with zero to two of its fields broken (or dropped) in one of the ways the contract
    forbids; a broken value can happen to be valid again (a junk `true` for machine_open), which is fine."""
    value = draw(_valid_event())
    for _ in range(draw(st.integers(0, 2))):
        field = draw(st.sampled_from(MUTATIONS))
        if field in ("event_id", "event_type", "occurred_at", "identifiers") and draw(st.integers(0, 4)) == 0:
            value.pop(field, None)
        elif field == "event_id":
            value[field] = draw(st.one_of(st.just(""), st.just("too long"), _junk))
        elif field == "event_type":
            value[field] = draw(
                st.one_of(st.sampled_from(["", "exploded", "OPENED", "open", "sent "]), _junk)
            )
        elif field == "occurred_at":
            kind = draw(st.sampled_from(["naive", "before 2000", "future", "odd", "junk"]))
            value[field] = draw(_occurred_at(kind))
        elif field == "identifiers":
            value[field] = draw(st.one_of(st.just({}), st.just([]), _junk))
        elif field == "identifier":
            ids = dict(value["identifiers"]) if isinstance(value.get("identifiers"), dict) else {}
            key = draw(st.sampled_from([*IDENTIFIER_TYPES, "twitter", "Email", "", "email "]))
            limit = IDENTIFIER_LIMITS.get(key, 10)
            ids[key] = draw(st.one_of(st.just(""), _over(limit), _junk, _text(1, 8)))
            value["identifiers"] = ids
        elif field in STRING_LIMITS:
            value[field] = draw(st.one_of(_over(STRING_LIMITS[field]), _junk))
        elif field == "bounce_type":
            value[field] = draw(st.one_of(st.sampled_from(["HARD", "bogus", " hard"]), _junk))
        elif field in ("machine_open", "bot_click"):
            value[field] = draw(st.one_of(st.sampled_from(["true", "false", 0, 1]), _junk))
        elif field == "schema_version":
            value[field] = draw(st.sampled_from([2, 0, -1, 1.5, "1", True, None, [1]]))
        else:
            value[draw(st.sampled_from(["extra", "eventId", "identifier", "Event_id", ""]))] = draw(_junk)
    return value


def test_sql_and_python_validators_agree_on_random_events(settings: Settings, ch) -> None:
    generated: list[dict[str, Any]] = []

    @hypothesis_settings(
        max_examples=200, database=None, deadline=None, suppress_health_check=list(HealthCheck)
    )
    @given(event_like(), st.booleans())
    def collect(value: dict[str, Any], ascii_only: bool) -> None:
        generated.append((value, ascii_only))

    collect()
    cases: list[tuple[str, bytes | None]] = []
    for i, (value, ascii_only) in enumerate(generated):
        if value.get("event_id") == "unique":
            value["event_id"] = f"h{i}-{uuid.uuid4().hex}"
        elif value.get("event_id") == "too long":
            value["event_id"] = f"h{i}-".ljust(257, "x")
        elif "event_id" not in value:
            value["message_id" if "message_id" not in value else "campaign_id"] = f"h{i}-{uuid.uuid4().hex}"
        raw = enc(value, ascii_only)
        if any(raw == other for _, other in cases):
            continue
        cases.append((f"#{i} {raw[:300]!r}", raw))
    assert len(cases) >= 150

    verdicts = round_trip(settings, ch, cases)
    found = disagreements(verdicts)
    assert not found, "\n".join(found)
    assert not verdicts.problems, "\n".join(verdicts.problems)
    valid = sum(1 for reason in verdicts.python.values() if not reason)
    assert 10 <= valid <= len(cases) - 10, f"{valid} of {len(cases)} random events valid: a poor mix"
