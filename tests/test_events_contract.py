"""The event contract in Python: schema plus semantic rules, with reasons a user can act on."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from sendflowr.events import InvalidEvent, decode_event, event_errors, validate_event

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def valid(**overrides):
    event = {"event_id": "e1", "event_type": "opened", "occurred_at": "2026-11-01T10:00:00Z",
             "identifiers": {"email": "a@example.com"}}
    event.update(overrides)
    return event


def test_valid_event_passes_unchanged() -> None:
    event = valid(esp="sendgrid", machine_open=True, identifiers={"email": "a@b.c", "klaviyo_id": "k1"})
    assert validate_event(event, NOW) is event


@pytest.mark.parametrize("event, fragment", [
    (valid(event_type="read"), "event_type"),
    (valid(occurred_at="2026-11-01T10:00:00"), "occurred_at"),
    (valid(occurred_at="1999-12-31T23:59:59Z"), "before 2000"),
    (valid(occurred_at=(NOW + timedelta(minutes=10)).isoformat()), "future"),
    (valid(identifiers={}), "identifiers"),
    (valid(identifiers={"fax": "1"}), "identifiers"),
    (valid(event_id=""), "event_id"),
    (valid(event_id=7), "event_id"),
    (valid(color="red"), "color"),
    (valid(machine_open="yes"), "machine_open"),
    (valid(schema_version=2), "schema_version"),
    ({"event_id": "e1"}, "required"),
])
def test_invalid_events_say_why(event, fragment) -> None:
    errors = event_errors(event, NOW)
    assert errors and any(fragment in e for e in errors), errors
    with pytest.raises(InvalidEvent):
        validate_event(event, NOW)


def test_offset_times_are_accepted_and_compared_in_utc() -> None:
    # 12:03+01:00 is 11:03Z: in the past relative to NOW although its wall clock is later.
    assert validate_event(valid(occurred_at="2026-11-28T12:03:00+01:00"), NOW)


@pytest.mark.parametrize("raw, fragment", [
    (b"\xff\xfe{}", "UTF-8"),
    (b"{not json", "invalid JSON"),
    (b"[1, 2]", "JSON object"),
    (b'{"a": "' + b"x" * 70_000 + b'"}', "exceeds"),
])
def test_decode_rejects_bad_bytes(raw: bytes, fragment: str) -> None:
    with pytest.raises(InvalidEvent, match=fragment):
        decode_event(raw, NOW)


def test_decode_accepts_valid_bytes() -> None:
    assert decode_event(json.dumps(valid()).encode(), NOW)["event_id"] == "e1"
