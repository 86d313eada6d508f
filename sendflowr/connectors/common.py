"""What every connector shares: the batch result, provider times to RFC 3339, deterministic event ids and
the cheap contract checks that stand in for the JSON Schema on the hot path.

Mappers build events field by field from a fixed set of keys, so the schema's structure holds by
construction; `contract_problem` checks what construction cannot promise (lengths, time range, an
identifier being present). tests/test_connectors_formats.py holds it to `sendflowr.events.validate_event`.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson

from sendflowr.contract import (
    EARLIEST_OCCURRED_AT,
    FIELD_MAX_CHARS,
    FUTURE_TOLERANCE,
    IDENTIFIER_MAX_CHARS,
    IDENTIFIER_TYPES,
    MAX_EVENT_BYTES,
)
from sendflowr.synth.fmt import codes_to_str, rfc3339_ms_codes

# An over-long optional field never costs its event: descriptive text is cut to the contract's limit, an id or
# address that long is not one (cutting it could make it someone else's), so it is left out. Either way the
# batch result counts it (Normalized.trimmed) and the webhook answer and import summary show it.
TRUNCATED_FIELDS = frozenset({"url", "user_agent"})
DROPPED_FIELDS = frozenset({"message_id", "campaign_id", "ip", "esp"})
_MAX_EPOCH = 1e11  # seconds: year 5138; larger values are milliseconds or garbage, not a time


class ConnectorError(ValueError):
    """A request or file that cannot be read at all (not one bad record): the caller answers 4xx."""


@dataclass
class Normalized:
    """One provider batch mapped to our contract. `sources[i]` is the record index events[i] came from
    (one SES delivery can name several recipients); rejects and skips name record indexes too."""

    events: list[dict[str, Any]] = field(default_factory=list)
    sources: list[int] = field(default_factory=list)
    rejects: list[tuple[int, str]] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    trimmed: Counter = field(default_factory=Counter)  # "url: truncated to 2048 characters" -> events

    def add(self, index: int, event: dict[str, Any]) -> None:
        self.events.append(event)
        self.sources.append(index)

    def reject(self, index: int, reason: str) -> None:
        self.rejects.append((index, reason))

    def rejected_unless(self, index: int, *required: tuple[object, str]) -> bool:
        """Reject record `index` with the reason of its first missing (None) required value; True when it was."""
        reason = next((why for value, why in required if value is None), None)
        if reason is not None:
            self.reject(index, reason)
        return reason is not None

    def extend(self, other: Normalized, offset: int = 0) -> None:
        self.events.extend(other.events)
        self.sources.extend(s + offset for s in other.sources)
        self.rejects.extend((i + offset, r) for i, r in other.rejects)
        self.skipped.update(other.skipped)
        self.trimmed.update(other.trimmed)

    def rejects_by_reason(self) -> Counter:
        return Counter(reason for _, reason in self.rejects)


def stable_id(provider: str, *parts: object) -> str:
    """A deterministic event id from the provider's own ids, so a provider retry gives the same id."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:32]
    return f"{provider}:{digest}"


def whole_seconds_to_rfc3339(values: list[Any]) -> list[str] | None:
    """The usual batch: every value an int of Unix seconds within 1970..5138, as our fixed-width text;
    None when any value is not (the caller takes the general path). Checks run at C speed."""
    if values and set(map(type, values)) == {int} and min(values) >= 0 and max(values) <= _MAX_EPOCH:
        return codes_to_str(rfc3339_ms_codes(np.array(values, dtype=np.int64) * 1000))
    return None


def epoch_to_rfc3339(values: list[Any]) -> list[str | None]:
    """Unix seconds (int, float or numeric strings) to `YYYY-MM-DDTHH:MM:SS.mmmZ`, a column at a time;
    None where a value is missing, not a number, or outside 1970..5138."""
    whole = whole_seconds_to_rfc3339(values)
    if whole is not None:
        return whole
    out: list[str | None] = [None] * len(values)
    good: list[int] = []
    millis: list[int] = []
    for i, value in enumerate(values):
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            number = value
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                continue
        else:
            continue
        if not 0 <= number <= _MAX_EPOCH:  # also NaN: not a Unix time in seconds
            continue
        good.append(i)
        millis.append(round(number * 1000))
    if good:
        text = codes_to_str(rfc3339_ms_codes(np.array(millis, dtype=np.int64)))
        for i, stamp in zip(good, text, strict=True):
            out[i] = stamp
    return out


def iso_to_rfc3339(value: Any) -> str | None:
    """A provider's ISO 8601 time to our form, or None when it is not one (naive times are not UTC-safe)."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if parsed.tzinfo is None:
            return None
        return parsed.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    except (ValueError, OverflowError):  # 0001-01-01T00:00:00+01:00 is before year 1 once in UTC
        return None


def text(value: Any) -> str | None:
    """A non-empty string field, or None (numbers become text: providers are loose about ids)."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return None


def fit(key: str, value: str, trimmed: Counter) -> str | None:
    """An optional field's value within the contract's limit: cut (text) or None (ids), counted in `trimmed`."""
    limit = FIELD_MAX_CHARS[key]
    if len(value) <= limit:
        return value
    if key in TRUNCATED_FIELDS:
        trimmed[f"{key}: truncated to {limit} characters"] += 1
        return value[:limit]
    trimmed[f"{key}: left out, longer than {limit} characters"] += 1
    return None


def put(event: dict[str, Any], key: str, value: Any, trimmed: Counter) -> None:
    """Set an optional text field when the provider gave one (numbers become text; empties skipped), fitted to
    the contract's length limit on the way, so hot mappers need no second pass."""
    if type(value) is not str:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return
        value = str(value)
    if value:
        if len(value) > FIELD_MAX_CHARS[key]:
            value = fit(key, value, trimmed)
            if value is None:
                return
        event[key] = value


def trim_optional(event: dict[str, Any], trimmed: Counter) -> None:
    """Fit every optional text field of a constructed event to its limit (see TRUNCATED_FIELDS)."""
    for key in TRUNCATED_FIELDS | DROPPED_FIELDS:
        value = event.get(key)
        if isinstance(value, str) and len(value) > FIELD_MAX_CHARS[key]:
            fitted = fit(key, value, trimmed)
            if fitted is None:
                del event[key]
            else:
                event[key] = fitted


def time_problem(occurred: str, latest: str) -> str | None:
    """Range check of a time in our fixed-width form against `latest` (now + tolerance, same form)."""
    if occurred < EARLIEST_STAMP:
        return "occurred_at: before 2000-01-01"
    if occurred > latest:
        return "occurred_at: more than 5 minutes in the future"
    return None


def latest_allowed(now: datetime | None = None) -> str:
    return _stamp((now or datetime.now(UTC)) + FUTURE_TOLERANCE)


def truthy(value: Any) -> bool:
    """Provider booleans arrive as true, "true", 1 or "1" (CSV exports make everything text)."""
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value) if isinstance(value, (bool, int)) else False


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


EARLIEST_STAMP = _stamp(EARLIEST_OCCURRED_AT)


def contract_problem(event: dict[str, Any], now: datetime, latest: str | None = None) -> str | None:
    """The first reason a constructed event breaks the contract, None when it holds. Mappers write
    occurred_at as fixed-width UTC text (YYYY-MM-DDTHH:MM:SS.mmmZ), so the range check is a string
    comparison; `latest` is now + tolerance in that form, computed once per batch."""
    if not event.get("event_id"):
        return "event_id: missing"
    identifiers = event.get("identifiers") or {}
    if not identifiers:
        return "identifiers: the record names no recipient (email or profile id)"
    for name, value in identifiers.items():
        if name not in IDENTIFIER_TYPES or not isinstance(value, str) or not value:
            return f"identifiers.{name}: empty"
        if len(value) > IDENTIFIER_MAX_CHARS[name]:
            return f"identifiers.{name}: longer than {IDENTIFIER_MAX_CHARS[name]} characters"
    for name, limit in FIELD_MAX_CHARS.items():
        value = event.get(name)
        if value is not None and len(value) > limit:
            return f"{name}: longer than {limit} characters"
    occurred = event.get("occurred_at")
    if occurred is None:
        return "occurred_at: missing or not a time"
    if len(occurred) != 24 or occurred[-1] != "Z":  # not one of ours: compare as times
        try:
            occurred = _stamp(datetime.fromisoformat(occurred.replace("Z", "+00:00")))
        except (ValueError, OverflowError):
            return "occurred_at: not a time in range"
    if occurred < EARLIEST_STAMP:
        return "occurred_at: before 2000-01-01"
    if occurred > (latest or _stamp(now + FUTURE_TOLERANCE)):
        return "occurred_at: more than 5 minutes in the future"
    return None


def finish(result: Normalized, now: datetime | None = None) -> Normalized:
    """Fit over-long optional fields, then drop constructed events that still break the contract into rejects,
    keeping the good ones."""
    moment = now or datetime.now(UTC)
    latest = _stamp(moment + FUTURE_TOLERANCE)
    events, sources = [], []
    for event, source in zip(result.events, result.sources, strict=True):
        trim_optional(event, result.trimmed)
        problem = contract_problem(event, moment, latest)
        if problem is None:
            events.append(event)
            sources.append(source)
        else:
            result.reject(source, problem)
    result.events, result.sources = events, sources
    result.rejects.sort()
    return result


_HEAD = b'{"event_id":'
_BETWEEN = b'},{"event_id":'


def serialize(events: list[dict[str, Any]]) -> list[bytes]:
    """One JSON value per event, byte for byte what orjson.dumps(event) gives, from one dumps of the whole
    list split at the event boundaries (less than half the cost of a call per event on the webhook's hot
    path). The split is exact: inside a JSON string a `"` is always escaped, so `},{"event_id":` only occurs
    between objects of a list, and events nest no list of objects; so when every event leads with event_id,
    exactly len(events) - 1 separators are the top-level boundaries. Anything else: one dumps per event."""
    out = None
    # first keys, C-level; an empty event ends the map early (StopIteration), which the length check catches
    leads = list(map(next, map(iter, events)))
    if events and len(leads) == len(events) and leads.count("event_id") == len(events):
        parts = orjson.dumps(events)[len(_HEAD) + 1:-2].split(_BETWEEN)
        if len(parts) == len(events):
            out = [_HEAD + part + b"}" for part in parts]
    if out is None:
        out = [orjson.dumps(event) for event in events]
    longest = max(map(len, out), default=0)
    if longest > MAX_EVENT_BYTES:  # unreachable with the length limits above; a guard, not a path
        raise ConnectorError(f"an event serialized to {longest} bytes (limit {MAX_EVENT_BYTES})")
    return out


def compact(event: dict[str, Any]) -> dict[str, Any]:
    """Drop optional fields that are None so the event carries only what the provider said."""
    return {key: value for key, value in event.items() if value is not None}
