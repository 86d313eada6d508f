"""`sendflowr import`: exported files (JSON lines, JSON arrays, CSV) into Kafka, rejects reported with
line numbers, exit codes as documented; the events land in the table through ingestion."""

from __future__ import annotations

import csv
import json

import orjson
import pytest
from test_connectors_support import FIXTURES, load_fixture

from sendflowr import cli
from sendflowr.connectors import FORMATS
from sendflowr.ingest import IngestOptions, ingest_once

pytestmark = pytest.mark.integration


def run_import(settings, monkeypatch, capsys, *argv: str, err: bool = False):
    for name, value in settings.as_env().items():
        monkeypatch.setenv(name, value)
    code = cli.main(["import", "--no-progress", *argv])
    captured = capsys.readouterr()
    return (code, captured.out, captured.err) if err else (code, captured.out)


def landed_ids(settings, ch) -> set[str]:
    ingest_once(settings, ch, IngestOptions(until_caught_up=True), log=lambda _line: None)
    return {r[0] for r in ch.query(f"SELECT event_id FROM {settings.clickhouse_database}.events").result_rows}


def test_jsonl_import_reports_rejects_with_line_numbers(settings, ch, monkeypatch, capsys, tmp_path) -> None:
    records = load_fixture("sendgrid_events.json")
    lines = [json.dumps(r) for r in records]
    lines.insert(3, "{not json")
    lines.insert(5, json.dumps({**records[2], "sg_event_id": ""}))
    lines.insert(7, "")
    path = tmp_path / "sendgrid.jsonl"
    path.write_text("\n".join(lines) + "\n")
    code, out = run_import(settings, monkeypatch, capsys, "--format", "sendgrid", str(path))
    assert code == 1  # some rows rejected, the good ones produced
    assert "11 events produced" in out and "rejected 2" in out
    rejects = [json.loads(line) for line in (tmp_path / "sendgrid.jsonl.rejects.jsonl").read_text().splitlines()]
    assert [(r["line"], r["reason"].split(" (")[0]) for r in rejects] == [
        (4, "line: invalid JSON"), (6, "sg_event_id: missing")]
    expected = {e["event_id"] for e in FORMATS["sendgrid"](records).events}
    assert landed_ids(settings, ch) == expected
    # importing the same file again adds nothing: ids are deterministic
    run_import(settings, monkeypatch, capsys, "--format", "sendgrid", str(path))
    assert landed_ids(settings, ch) == expected
    assert ch.command(f"SELECT count() FROM {settings.clickhouse_database}.events") == len(expected)


def test_csv_and_array_files_of_several_providers(settings, ch, monkeypatch, capsys, tmp_path) -> None:
    records = load_fixture("sendgrid_events.json")
    fields = sorted({k for r in records for k in r})
    sendgrid_csv = tmp_path / "sendgrid.csv"
    with open(sendgrid_csv, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(records)
    code, out = run_import(settings, monkeypatch, capsys, "--format", "sendgrid", "--csv", str(sendgrid_csv))
    assert code == 0, out
    mailgun_csv = tmp_path / "mailgun.csv"
    with open(mailgun_csv, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "event", "timestamp", "recipient", "message.headers.message-id", "client-info.bot",
                         "severity"])
        writer.writerow(["mg-1", "opened", "1521243340.5", "alice@example.com", "m1@x", "apple", ""])
        writer.writerow(["mg-2", "failed", "1521243341", "bob@example.com", "m2@x", "", "temporary"])
    assert run_import(settings, monkeypatch, capsys, "--format", "mailgun", "--csv", str(mailgun_csv))[0] == 0
    ses_array = tmp_path / "ses.json"
    ses_array.write_text(json.dumps(load_fixture("ses_events.json")))
    klaviyo = tmp_path / "klaviyo.jsonl"
    klaviyo.write_text("\n".join(json.dumps(item) for item in load_fixture("klaviyo_webhook.json")["data"]))
    assert run_import(settings, monkeypatch, capsys, "--format", "ses", str(ses_array))[0] == 0
    code, out = run_import(settings, monkeypatch, capsys, "--format", "klaviyo", str(klaviyo))
    assert code == 0 and "skipped        1  klaviyo:sent_sms" in out
    native = FIXTURES / "native_events.jsonl"
    assert run_import(settings, monkeypatch, capsys, "--format", "native", str(native))[0] == 0
    ids = landed_ids(settings, ch)
    assert {e["event_id"] for e in FORMATS["sendgrid"](records).events} <= ids
    assert {"mailgun:mg-1", "mailgun:mg-2", "klaviyo:4UxDnA2fLxP", "crm-1", "crm-2"} <= ids
    assert len(ids) == 11 + 2 + 8 + 3 + 2
    rows = dict(ch.query(f"SELECT event_id, (machine_open, bounce_type) FROM {settings.clickhouse_database}.events "
                         "WHERE esp = 'mailgun'").result_rows)
    assert rows == {"mailgun:mg-1": (1, ""), "mailgun:mg-2": (0, "soft")}
    machine = ch.command(f"SELECT machine_open FROM {settings.clickhouse_database}.events "
                         "WHERE event_id = 'sendgrid:Ty6dF2gHs1QMvCzPmNhE4g=='")
    assert machine == 1  # "True" in a CSV cell is still a machine open


def test_unusable_input_exits_2_and_produces_nothing(settings, ch, monkeypatch, capsys, tmp_path) -> None:
    good = FIXTURES / "native_events.jsonl"
    code, _, err = run_import(settings, monkeypatch, capsys, "--format", "native", str(good),
                              str(tmp_path / "absent.jsonl"), err=True)
    assert code == 2 and "absent.jsonl: no such file" in err
    broken = tmp_path / "broken.json"
    broken.write_text('[{"event_id": ')
    code, _, err = run_import(settings, monkeypatch, capsys, "--format", "native", str(broken), err=True)
    assert code == 2 and "not valid JSON" in err
    assert landed_ids(settings, ch) == set()


def test_native_import_keeps_the_per_record_verdicts_and_line_numbers(settings, ch, monkeypatch, capsys,
                                                                      tmp_path) -> None:
    """Our contract's file through the column-wise path: accepted, rejected and why, line by line, exactly as the
    per-record validator (native.normalize_each) says; what it accepts lands in `events`."""
    from datetime import UTC, datetime

    from test_ingest_validation import corpus

    from sendflowr.connectors.native import normalize_each

    lines: list[bytes] = []
    for i, (_label, raw) in enumerate(corpus()):
        if raw and b"\n" not in raw.strip() and b"\r" not in raw.strip():
            lines.append(raw.strip())
        if i % 17 == 0:
            lines.append(b"")  # blank lines are skipped and keep the numbering
    for i in range(2000):  # ordinary events, so most of the file takes the column path
        lines.append(json.dumps({"event_id": f"ok-{i}", "event_type": "opened",
                                 "occurred_at": f"2024-05-{1 + i % 28:02d}T10:{i % 60:02d}:00.{i % 1000:03d}Z",
                                 "identifiers": {"email": f"p{i}@example.com"}, "esp": "custom"}).encode())
    path = tmp_path / "export.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    expected_rejects, expected_ids = [], set()
    now = datetime.now(UTC)
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = orjson.loads(line)  # the reader's parser: what it cannot read is a reject of the line
        except orjson.JSONDecodeError:
            expected_rejects.append((number, "line: invalid JSON"))
            continue
        result = normalize_each([record], now)
        if result.rejects:
            expected_rejects.append((number, result.rejects[0][1]))
        else:
            expected_ids.add(record["event_id"])
    code, out = run_import(settings, monkeypatch, capsys, "--format", "native", str(path))
    assert code == 1 and f"{len(expected_ids)} events produced" in out
    rejects = [json.loads(r) for r in (tmp_path / "export.jsonl.rejects.jsonl").read_text().splitlines()]
    got = sorted((r["line"], r["reason"].split(" (")[0] if r["reason"].startswith("line:") else r["reason"])
                 for r in rejects)
    assert got == sorted(expected_rejects) and len(got) > 80
    assert landed_ids(settings, ch) == expected_ids
