"""Staging's certified fast path (migration 0008) stages exactly the rows the full validation would.

Every payload is staged twice in the real engine: through `ingest_inbox` (one typed parse; certified rows
skip the full validation, the rest fall back to it) and straight into `ingest_staging` (the DEFAULT columns
of migration 0003 validate every row). Both must hold the same values in every column. Certification must
also be sound (only events the Python validator accepts) and actually used for the common compact shape.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from test_ingest_validation import corpus, enc, event, event_like, python_verdict

from sendflowr.settings import Settings

pytestmark = pytest.mark.integration

STAGED = ("kafka_topic, kafka_partition, raw_size, event_id, event_type, occurred_at, email, klaviyo_id, phone, "
          "external_id, esp, message_id, campaign_id, user_agent, ip, url, bounce_type, machine_open, bot_click, "
          "reason, payload")


def compact(raw: bytes | None) -> bytes | None:
    """The payload as a compact producer (orjson) writes it, or None when it is not JSON at all."""
    try:
        value = json.loads(raw or b"")
    except (ValueError, RecursionError):  # the corpus nests arrays deeper than Python's json recurses
        return None
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    # a lone surrogate has no UTF-8 form: keep it as the escape it arrived as
    return text.encode() if text.isascii() or not any(0xD800 <= ord(c) <= 0xDFFF for c in text) \
        else json.dumps(value, separators=(",", ":")).encode()


def _batch(payloads: list[bytes | None], attempt: str) -> pa.Table:
    rows = len(payloads)
    return pa.table({
        "kafka_partition": pa.array(np.zeros(rows, dtype=np.uint32)),
        "kafka_offset": pa.array(np.arange(rows, dtype=np.uint64)),
        "raw": pa.array([p or b"" for p in payloads], type=pa.binary()),
        "attempt_id": pa.array([attempt] * rows, type=pa.string()),
        "kafka_topic": pa.array(["t"] * rows, type=pa.string()),
    })


def _staged(ch, db: str, attempt: str) -> dict[int, tuple]:
    rows = ch.query(f"SELECT kafka_offset, {STAGED} FROM {db}.ingest_staging WHERE attempt_id = {{a:String}}",
                    parameters={"a": attempt}).result_rows
    return {row[0]: tuple(row[1:]) for row in rows}


def _certified(ch, db: str, payloads: list[bytes | None]) -> list[bool]:
    """Run the certifying view's own SELECT over the payloads (its target table is engine Null)."""
    select = ch.query("SELECT as_select FROM system.tables WHERE database = {db:String} "
                      "AND name = 'ingest_certify'", parameters={"db": db}).result_rows[0][0]
    assert f"{db}.ingest_inbox" in select
    ch.command(f"CREATE TABLE {db}.probe AS {db}.ingest_inbox ENGINE = MergeTree ORDER BY kafka_offset")
    ch.insert_arrow(f"{db}.probe", _batch(payloads, "probe"))
    rows = ch.query(f"SELECT kafka_offset, certified FROM ({select.replace(f'{db}.ingest_inbox', f'{db}.probe')}) "
                    f"ORDER BY kafka_offset").result_rows
    ch.command(f"DROP TABLE {db}.probe")
    assert [row[0] for row in rows] == list(range(len(payloads)))
    return [bool(row[1]) for row in rows]


def check_both_paths(settings: Settings, ch, payloads: list[bytes | None]) -> list[bool]:
    db = settings.clickhouse_database
    ch.insert_arrow(f"{db}.ingest_inbox", _batch(payloads, "inbox"))
    ch.insert_arrow(f"{db}.ingest_staging", _batch(payloads, "full"))
    via_inbox, via_defaults = _staged(ch, db, "inbox"), _staged(ch, db, "full")
    assert sorted(via_defaults) == list(range(len(payloads)))
    assert sorted(via_inbox) == list(range(len(payloads)))  # every row staged once, certified or not
    differ = [f"{payloads[i]!r}:\n  inbox {via_inbox[i]}\n  full  {via_defaults[i]}"
              for i in range(len(payloads)) if via_inbox[i] != via_defaults[i]]
    assert not differ, "\n".join(differ[:10])
    certified = _certified(ch, db, payloads)
    unsound = [p for p, ok in zip(payloads, certified, strict=True) if ok and python_verdict(p)]
    assert not unsound, unsound[:10]
    return certified


def _common_shape(raw: bytes | None) -> bool:
    """Compact JSON without escapes, schema_version absent or the integer 1: the shape producers write, which
    the fast path must take when the event is valid."""
    if raw is None or b"\\" in raw or python_verdict(raw) != "" or compact(raw) != raw:
        return False
    version = json.loads(raw).get("schema_version", 1)
    return type(version) is int and version == 1


def test_fast_path_stages_what_the_full_validation_stages(settings: Settings, ch) -> None:
    cases = [raw for _, raw in corpus()]
    compacted = [c for c in (compact(raw) for raw in cases) if c is not None]
    near_misses = [
        enc(event(event_id="x" * 257), ascii_only=False),
        b'{"event_id":"a","event_id":"b","event_type":"sent","occurred_at":"2024-05-01T10:00:00Z",'
        b'"identifiers":{"email":"a@b.c"}}',
        b'{"event_id":"a1","event_type":"sent","occurred_at":"2024-05-01T10:00:00Z",'
        b'"identifiers":{"email":"a@b.c","email":"d@e.f"}}',
        b'{"event_id":"a2","event_type":"sent","occurred_at":"2024-05-01T10:00:00Z","identifiers":{"email":"a@b.c"},'
        b'"schema_version":1,"schema_version":1}',
        b'{"event_id":"a3","event_type":"sent","occurred_at":"2024-05-01T10:00:00Z","identifiers":["a@b.c"]}',
        b'{"event_id":"a4","event_type":"sent","occurred_at":"2024-05-01T10:00:00Z","identifiers":{"email":"a@b.c"},'
        b'"esp":5}',
        b'{"event_id":"a5","event_type":"sent","occurred_at":"2024-05-01T10:00:00Z","identifiers":{"email":"a@b.c"},'
        b'"machine_open":"true"}',
        b'{"event_id":"a6","event_type":"sent","occurred_at":"2024-05-01T10:00:00Z","identifiers":{"email":"\xff"}}',
        b'{"event_id":"a7","event_type":"sent","occurred_at":"2024-05-01T10:00:00Z","identifiers":{"email":"a@b.c"}}'
        b' {}',
        b'{"event_id":"a8","event_type":"sent","occurred_at":"1999-12-31T23:59:59Z","identifiers":{"email":"a@b.c"}}',
        b'{"event_id":"a9","event_type":"sent","occurred_at":"2024-05-01T10:00:00Z","identifiers":{"phone":"1"},'
        b'"bounce_type":"HARD","schema_version":1}',
        b'{"event_id":"b1","event_type":"sent","occurred_at":"2024-05-01T10:00:00Z","identifiers":{"phone":"1"},'
        b'"schema_version":1.0,"machine_open":true,"bot_click":false}',
        b'{"event_id":"b2","event_type":"sent","occurred_at":"2024-05-01T10:00:00Z","identifiers":{"phone":"1"},'
        b'"schema_version":10}',
        b'{"event_id":"b3","event_type":"sent","occurred_at":"2024-05-01T10:00:00Z","identifiers":{"phone":"1"},'
        b'"url":null}',
    ]
    payloads = cases + compacted + near_misses
    certified = check_both_paths(settings, ch, payloads)
    common = [i for i, raw in enumerate(payloads) if _common_shape(raw)]
    assert len(common) >= 25  # most of the corpus's valid events, compacted, and the valid near misses
    assert [payloads[i] for i in common if not certified[i]] == []
    assert sum(certified) == len(common)  # and nothing else: every other row took the full validation


def test_fast_path_agrees_on_random_compact_events(settings: Settings, ch) -> None:
    generated: list[dict[str, Any]] = []

    @hypothesis_settings(max_examples=300, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(event_like())
    def collect(value: dict[str, Any]) -> None:
        generated.append(value)

    collect()
    payloads: list[bytes | None] = []
    for i, value in enumerate(generated):
        if value.get("event_id") == "unique":
            value["event_id"] = f"r{i}-{uuid.uuid4().hex}"
        elif value.get("event_id") == "too long":
            value["event_id"] = f"r{i}-".ljust(257, "x")
        payloads.append(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
    certified = check_both_paths(settings, ch, payloads)
    common = [i for i, raw in enumerate(payloads) if _common_shape(raw)]
    assert len(common) >= 30
    assert [payloads[i] for i in common if not certified[i]] == []
