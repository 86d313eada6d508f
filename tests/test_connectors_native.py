"""Our own contract's connector (`sendflowr import --format native`, /webhooks/events) validates column-wise and
gives exactly the per-record validator's verdicts: the same events in the same order, the same rejects with the
same reasons, the same trimmed counts. The column check (sendflowr.event_columns.certify) never certifies a record
the validator rejects, and certifies every ordinary valid one (so the fast path does the work)."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from test_connectors_support import FIXTURES
from test_ingest_validation import _occurred_at, _valid_event, corpus, event, event_like

from sendflowr import event_columns
from sendflowr.connectors import FORMATS
from sendflowr.connectors.importer import read_chunks
from sendflowr.connectors.native import normalize, normalize_each
from sendflowr.event_columns import certify
from sendflowr.events import event_errors, event_schema

NOW = datetime.now(UTC)
PROVIDERS = ("sendgrid", "mailgun", "ses", "klaviyo")


def parsed_corpus() -> list[Any]:
    """The ingestion corpus (valid, invalid and hostile events) as the import reads it: every case orjson parses."""
    out = []
    for _label, raw in corpus():
        try:
            out.append(orjson.loads(raw or b""))
        except orjson.JSONDecodeError:
            continue
    return out


def fixture_records() -> list[Any]:
    """Every record of every provider fixture (not our contract: rejects with many reasons) and our own file."""
    out: list[Any] = []
    for path in sorted(FIXTURES.glob("*.json")):
        data = json.loads(path.read_text())
        items = data if isinstance(data, list) else data.get("data", [data]) if isinstance(data, dict) else [data]
        out += items if isinstance(items, list) else [items]
    out += [json.loads(line) for line in (FIXTURES / "native_events.jsonl").read_text().splitlines() if line]
    return out


def assert_same(records: list[Any], reserved: tuple[str, ...] = ()) -> None:
    before = copy.deepcopy(records)
    columns = normalize(records, NOW, reserved)
    each = normalize_each(copy.deepcopy(records), NOW, tuple(f"{name}:" for name in reserved))
    assert records == before  # the input is not modified
    assert columns.events == each.events
    assert [list(e) for e in columns.events] == [list(e) for e in each.events]  # same key order: same bytes
    assert columns.sources == each.sources
    assert columns.rejects == each.rejects
    assert columns.trimmed == each.trimmed


def assert_sound(records: list[Any]) -> None:
    for record, certified in zip(records, certify(records, NOW), strict=True):
        if certified:
            assert event_errors(record, NOW) == [], record
            assert normalize_each([record], NOW).events == [record]  # nothing to trim


def test_the_native_format_is_the_column_path() -> None:
    assert FORMATS["native"] is normalize


def test_same_verdicts_on_the_ingestion_corpus() -> None:
    records = parsed_corpus()
    result = normalize(records, NOW)
    assert len(records) > 120 and 30 <= len(result.events) < len(records) - 80  # valid and invalid cases
    assert_same(records)
    assert_same(records, reserved=PROVIDERS)
    assert_sound(records)
    # one at a time too: a batch of one takes the same path as a batch of many
    for record in records:
        assert_same([record])


def test_same_verdicts_on_provider_fixtures_and_our_own_file() -> None:
    records = fixture_records()
    result = normalize(records, NOW)
    own = (FIXTURES / "native_events.jsonl").read_text().count("\n")
    assert len(records) > 20 and len(result.events) == own and len(result.rejects) == len(records) - own
    assert_same(records)
    assert_same(records + parsed_corpus())
    assert_sound(records)


def test_same_verdicts_on_random_hostile_events() -> None:
    generated: list[Any] = []

    @hypothesis_settings(max_examples=600, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(event_like())
    def collect(value: dict[str, Any]) -> None:
        generated.append(value)

    collect()
    # reserved namespaces and near-miss ids on some of them
    for i, value in enumerate(generated):
        if i % 7 == 0 and isinstance(value.get("event_id"), str):
            value["event_id"] = ("sendgrid:" if i % 2 else "sendgrid-") + value["event_id"]
    # one of each outcome whatever the draw (a draw of 600 can miss trimming): kept, trimmed, rejected
    click = json.loads((FIXTURES / "native_events.jsonl").read_text().splitlines()[1])
    generated += [click, click | {"event_id": "long-url", "url": "https://example.org/" + "a" * 5000}, {"event_id": 7}]
    result = normalize(generated, NOW, PROVIDERS)
    assert result.events and result.rejects and result.trimmed  # all three kinds of outcome
    assert_same(generated)
    assert_same(generated, reserved=PROVIDERS)
    assert_sound(generated)
    for start in range(0, len(generated), 37):  # smaller batches: other mixes of shapes
        assert_same(generated[start:start + 37], reserved=PROVIDERS)


def test_every_ordinary_valid_event_is_certified() -> None:
    """The fast path does the work: valid events with any mix of optional fields, offsets and fraction digits are
    certified (a float schema_version, 1.0, is left to the per-record validator)."""
    generated: list[Any] = []

    @hypothesis_settings(max_examples=400, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(_valid_event())
    def collect(value: dict[str, Any]) -> None:
        if value.get("schema_version", 1) == 1 and type(value.get("schema_version", 1)) is int:
            generated.append(value)

    collect()
    assert len(generated) > 300
    assert certify(generated, NOW).all()
    assert_same(generated)


@pytest.mark.parametrize("kind", ["valid", "naive", "before 2000", "future", "odd", "junk"])
def test_times_agree_with_the_validator(kind: str) -> None:
    values: list[Any] = []

    @hypothesis_settings(max_examples=300, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(_occurred_at(kind))
    def collect(value: Any) -> None:
        values.append(value)

    collect()
    records = [event(occurred_at=value) for value in values]
    assert_same(records)
    assert_sound(records)
    if kind == "valid":
        assert certify(records, NOW).all()


def test_time_edges() -> None:
    """Boundaries the validator draws: 2000-01-01, now + 5 minutes, fractions truncated to microseconds, offsets,
    calendar days, leap years, and texts a looser parser would take."""
    limit = NOW + timedelta(minutes=5)
    stamps = []
    for base in (datetime(2000, 1, 1, tzinfo=UTC), limit):
        for delta_us in (-1_000_001, -1, 0, 1, 999, 1_000_000):
            moment = base + timedelta(microseconds=delta_us)
            for offset in (0, 59, -59, 23 * 60 + 59, -(23 * 60 + 59), 330):
                local = moment + timedelta(minutes=offset)
                body = local.strftime("%Y-%m-%dT%H:%M:%S")
                sign = "+" if offset > 0 else "-"
                suffix = "Z" if offset == 0 else f"{sign}{abs(offset) // 60:02d}:{abs(offset) % 60:02d}"
                micro = f".{local.microsecond:06d}"
                for digits in ("", ".1", micro, micro + "999", micro + "000"):
                    stamps.append(body + digits + suffix)
    stamps += ["2024-02-29T00:00:00Z", "2023-02-29T00:00:00Z", "2100-02-29T00:00:00Z", "2000-02-29T12:00:00Z",
               "2024-04-31T00:00:00Z", "2024-12-31T23:59:59.999999999Z", "2024-01-01T00:00:00+24:00",
               "2024-01-01T00:00:00+23:60", "2024-01-01T00:00:00-00:00", "2024-01-01T00:00:00+00:00",
               "2024-01-01T00:00:00Z\n", "2024-01-01T00:00:00z", "2024-01-01t00:00:00Z", "2024-01-01T00:00:00.Z",
               "2024-01-01T00:00:00.1234567890Z", "２０２４-01-01T00:00:00Z", "2024-01-01T00:00:00+0100",
               "0000-01-01T00:00:00Z", "9999-12-31T23:59:59-23:59", "2024-00-01T00:00:00Z", "2024-13-01T00:00:00Z",
               "2024-01-00T00:00:00Z", "2024-01-32T00:00:00Z", "2024-01-01T24:00:00Z", "2024-01-01T00:60:00Z",
               "2024-01-01T00:00:60Z", " 2024-01-01T00:00:00Z", "2024-01-01T00:00:00 Z", ""]
    records = [event(occurred_at=stamp) for stamp in stamps]
    verdicts = [not event_errors(r, NOW) for r in records]
    assert any(verdicts) and not all(verdicts)
    assert_same(records)
    assert_sound(records)
    assert (certify(records, NOW) == verdicts).all()  # on these, the column check misses no valid time


def test_a_schema_the_column_check_does_not_know_fails_loudly() -> None:
    schema = copy.deepcopy(event_schema())
    event_columns._Object("event", schema)  # the shipped schema builds
    changed = copy.deepcopy(schema)
    changed["properties"]["esp"]["pattern"] = "^[a-z]+$"
    with pytest.raises(NotImplementedError, match="pattern"):
        event_columns._Object("event", changed)
    changed = copy.deepcopy(schema)
    changed["properties"]["identifiers"]["properties"]["email"]["format"] = "email"
    with pytest.raises(NotImplementedError, match="format"):
        event_columns._Object("event", changed)
    changed = copy.deepcopy(schema)
    changed["properties"]["ip"]["anyOf"] = [{"format": "ipv4"}, {"format": "ipv6"}]
    with pytest.raises(NotImplementedError, match="anyOf"):
        event_columns._Object("event", changed)


def test_reader_keeps_line_numbers(tmp_path) -> None:
    """Blank lines, lines that are not JSON and good lines across chunk boundaries keep their numbers."""
    lines = []
    for i in range(1, 60):
        if i % 11 == 0:
            lines.append("")
        elif i % 13 == 0:
            lines.append("{not json")
        else:
            lines.append(json.dumps({"n": i}))
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")
    for size in (5, 7, 1000):
        chunks = list(read_chunks(path, False, size))
        records = [(line, record["n"]) for c in chunks for line, record in zip(c.lines, c.records, strict=True)]
        errors = [(line, reason) for c in chunks for line, _, reason in c.errors]
        assert records == [(i, i) for i in range(1, 60) if i % 11 and i % 13]
        assert [line for line, _ in errors] == [13, 26, 39, 52]
        assert all(reason.startswith("line: invalid JSON") for _, reason in errors)
