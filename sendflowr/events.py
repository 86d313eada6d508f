"""The event contract: JSON Schema v1 plus the semantic rules a schema cannot say.

`validate_event` is the one Python validator (generator, connectors, API, tests). Ingestion applies the
same rules in ClickHouse SQL (the staging table's columns, migrations 0003 and 0008); tests hold the two to the
same verdicts. The contract's facts themselves live in sendflowr.contract.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from functools import cache
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker

from sendflowr.contract import (  # noqa: F401 (re-exported: the contract's names as producers know them)
    EARLIEST_OCCURRED_AT,
    EVENT_TYPES,
    FUTURE_TOLERANCE,
    IDENTIFIER_TYPES,
    MAX_EVENT_BYTES,
    SCHEMA_VERSION,
    event_schema,
)


@cache
def _validator() -> Draft202012Validator:
    return Draft202012Validator(event_schema(), format_checker=FormatChecker())


class InvalidEvent(ValueError):
    """An event that breaks the contract; `reason` is short and stable enough to group by."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def parse_occurred_at(value: str) -> datetime:
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise InvalidEvent("occurred_at: needs an offset (Z or +hh:mm)")
    if value[-6:-5] in ("+", "-") and value[-2:].isdigit() and int(value[-2:]) > 59:
        raise InvalidEvent("occurred_at: offset minutes must be 00 to 59")  # fromisoformat takes +05:60
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00:00+01:00 is before year 1 once in UTC
        raise InvalidEvent("occurred_at: out of range once converted to UTC") from None


def event_errors(event: Any, now: datetime | None = None) -> list[str]:
    """Every reason the event is invalid; empty when it is valid."""
    if not isinstance(event, dict):
        return [f"event: expected a JSON object, got {type(event).__name__}"]
    errors = [
        f"{'.'.join(str(p) for p in err.absolute_path) or 'event'}: {err.message}"
        for err in sorted(_validator().iter_errors(event), key=lambda e: list(map(str, e.absolute_path)))
    ]
    occurred = event.get("occurred_at")
    if isinstance(occurred, str) and not any(e.startswith("occurred_at") for e in errors):
        try:
            moment = parse_occurred_at(occurred)
        except (InvalidEvent, ValueError):
            errors.append(f"occurred_at: not an RFC 3339 time: {occurred!r}")
        else:
            limit = (now or datetime.now(UTC)) + FUTURE_TOLERANCE
            if moment < EARLIEST_OCCURRED_AT:
                errors.append("occurred_at: before 2000-01-01")
            elif moment > limit:
                errors.append("occurred_at: more than 5 minutes in the future")
    return errors


def validate_event(event: Any, now: datetime | None = None) -> dict[str, Any]:
    """Return the event unchanged when valid; raise InvalidEvent with the first reason otherwise."""
    errors = event_errors(event, now)
    if errors:
        raise InvalidEvent(errors[0])
    return event


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """object_pairs_hook: a repeated key is ambiguous (parsers keep the first or the last copy), and a lone
    surrogate escape is no Unicode text; ClickHouse's parser rejects both, so this one does too."""
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise InvalidEvent(f"payload: duplicate key {key!r}")
        for text in (key, value) if isinstance(value, str) else (key,):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidEvent("payload: invalid JSON (lone surrogate escape)") from None
        obj[key] = value
    return obj


def decode_event(raw: bytes, now: datetime | None = None) -> dict[str, Any]:
    """Bytes from the wire to a valid event, with the same reasons ingestion records."""
    if len(raw) > MAX_EVENT_BYTES:
        raise InvalidEvent(f"payload: {len(raw)} bytes exceeds {MAX_EVENT_BYTES}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidEvent("payload: not valid UTF-8") from None
    try:
        event = json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as exc:
        raise InvalidEvent(f"payload: invalid JSON ({exc.msg})") from None
    except RecursionError:  # hostile nesting must be a reject like any other, not a crash
        raise InvalidEvent("payload: invalid JSON (nested too deeply)") from None
    return validate_event(event, now)
