"""The decision log end to end on the real broker and engine: every decision the API serves (single, coalesced,
batch) reaches Kafka off the request path and lands exactly once in ClickHouse through the shared ingestion run;
lost records are counted, never silent; malformed messages are rejected with a reason and lose nothing good."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from api_world import standard_world, window, z
from fastapi.testclient import TestClient

from sendflowr import progress
from sendflowr.clickhouse import get_client
from sendflowr.decisions import records
from sendflowr.decisions.log_ingest import DECISIONS
from sendflowr.decisions.snapshot import SnapshotHolder
from sendflowr.ingest.run import Hooks, IngestOptions, ingest_once
from sendflowr.kafka_io import ensure_topic, produce_all
from sendflowr.local.processes import free_port
from sendflowr.settings import Settings
from sendflowr_api.app import create_app

pytestmark = pytest.mark.integration


@pytest.fixture
def logged(settings: Settings) -> Settings:
    """The test's database and events topic, plus its own decision-log topic."""
    fresh = settings.model_copy(update={"decision_log_topic": f"decisions-{uuid.uuid4().hex[:10]}",
                                        "api_control_share": 0.5})
    ensure_topic(fresh, fresh.decision_log_topic)
    return fresh


def app_for(settings: Settings, client, **log_overrides):
    people = standard_world(client, settings.clickhouse_database)
    holder = SnapshotHolder(lambda: get_client(settings), settings.clickhouse_database, 3600)
    holder.refresh()
    app = create_app(settings, holder=holder, refresher=False)
    app.state.decision_log.producer_overrides.update(log_overrides)
    return app, people


def metric(api: TestClient, name: str) -> float:
    for line in api.get("/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            if line.split(" ")[0] == name or name.endswith("}"):
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def rows(client, database: str, sql: str = "") -> list[dict]:
    result = client.query(f"SELECT *, toString(arm) AS arm_name FROM {database}.decision_log {sql} "
                          "ORDER BY decided_at, kafka_partition, kafka_offset, kafka_row")
    def aware(value):  # the driver gives naive UTC datetimes
        return value.replace(tzinfo=UTC) if isinstance(value, datetime) and value.tzinfo is None else value

    return [{k: aware(v) for k, v in zip(result.column_names, row, strict=True)} for row in result.result_rows]


def test_every_served_decision_lands_exactly_once(logged: Settings, ch) -> None:
    db = logged.clickhouse_database
    app, people = app_for(logged, ch)
    after, before = window()
    answers = []
    with TestClient(app) as api:
        for i, (name, who) in enumerate([("jane", {"email": "Jane.Doe@gmail.com"}), ("omar", {"phone": "+14155552671"}),
                                         ("kim", {"klaviyo_id": "k_kim"}), ("new", {"email": "new.person@gmail.com"})]):
            extra = {"campaign_id": "spring", "message_id": f"m-{name}"} if i % 2 == 0 else {}
            r = api.post("/timing-decision", json={**who, "send_after": z(after), "send_before": z(before),
                                                   "latency_estimate_seconds": 300, **extra})
            assert r.status_code == 200, r.text
            answers.append(({**extra}, r.json()))
        recipients = [{"email": f"p{i}@gmail.com", "message_id": f"b-{i}"} for i in range(1200)]
        recipients.append({"email": "noreply@gmail.com"})  # no decision: not a record
        batch = api.post("/timing-decisions", json={"send_after": z(after), "send_before": z(before),
                                                    "latency_estimate_seconds": 60, "campaign_id": "spring-b",
                                                    "recipients": recipients})
        assert batch.status_code == 200 and batch.json()["decided"] == 1200 and batch.json()["failed"] == 1
        assert metric(api, "sendflowr_api_decision_log_queued_total") == 1204
        assert metric(api, "sendflowr_api_decision_log_enabled") == 1
    stats = app.state.decision_log.stats()  # the lifespan's end flushed the log
    assert stats["delivered"] == 1204 and sum(stats["dropped"].values()) == 0 and stats["pending"] == 0

    report = ingest_once(logged, ch, IngestOptions(), sink=DECISIONS, log=lambda _: None)
    assert report.inserted == 1204 and report.rejected == 0 and report.messages == 4 + 3  # 1200 = 3 messages of 500
    stored = rows(ch, db)
    assert len(stored) == 1204 and len({r["decision_id"] for r in stored}) == 1204
    for extra, answer in answers:
        row = next(r for r in stored if r["endpoint"] == "single" and r["universal_id"] == answer["universal_id"])
        assert row["campaign_id"] == extra.get("campaign_id", "") and row["message_id"] == extra.get("message_id", "")
        assert z(row["delivery_at"]) == answer["delivery_timestamp_utc"]
        assert z(row["trigger_at"]) == answer["trigger_timestamp_utc"]
        assert row["arm_name"] == answer["arm"] and row["fallback_level"] == answer["fallback_level"]
        assert row["known_person"] == answer["known_person"] and row["snapshot_version"] == answer["snapshot_version"]
        assert abs(row["confidence"] - answer["confidence_score"]) < 0.006
        assert (row["send_after"], row["send_before"], row["latency_seconds"]) == (after, before, 300.0)
        if answer["arm"] == "treatment":
            assert row["model_delivery_at"] == row["delivery_at"]
    by_message = {r["message_id"]: r for r in stored if r["endpoint"] == "batch"}
    for item in batch.json()["decisions"][:-1]:
        row = by_message[f"b-{item['index']}"]
        assert row["universal_id"] == item["universal_id"] and row["campaign_id"] == "spring-b"
        assert row["arm_name"] == item["arm"] and z(row["delivery_at"]) == item["delivery_timestamp_utc"]
    assert 0.4 < sum(r["arm_name"] == "control" for r in by_message.values()) / 1200 < 0.6
    assert people["jane"].universal_id in {r["universal_id"] for r in stored}

    # nothing new: a second run adds nothing; the decision topic's ranges are not events for downstream assets
    again = ingest_once(logged, ch, IngestOptions(), sink=DECISIONS, log=lambda _: None)
    assert again.inserted == 0 and len(rows(ch, db)) == 1204
    assert all(topic == logged.kafka_topic for topic, _ in progress.committed_ends(ch, db))
    assert {t for t, _ in progress.committed_ends(ch, db, sink="decisions")} == {logged.decision_log_topic}


class CrashAfter(Hooks):
    def __init__(self, table: str) -> None:
        self.table = table

    def after_insert(self, table: str) -> None:
        if table == self.table:
            raise RuntimeError(f"crash after {table}")


@pytest.mark.parametrize("crash_after", ["decision_log", "rejected_events"])
def test_a_crash_mid_load_is_replayed_without_duplicates(logged: Settings, ch, crash_after: str) -> None:
    db = logged.clickhouse_database
    now = datetime.now(UTC)
    columns = _columns(800, now)
    messages = [(None, value) for _, value in records.encode(columns)] + [(None, b"{not json")]
    produce_all(logged, messages, topic=logged.decision_log_topic)
    with pytest.raises(RuntimeError, match="crash"):
        ingest_once(logged, ch, IngestOptions(), sink=DECISIONS, hooks=CrashAfter(crash_after), log=lambda _: None)
    replay = ingest_once(logged, ch, IngestOptions(), sink=DECISIONS, log=lambda _: None)
    assert replay.replayed
    assert int(ch.command(f"SELECT count() FROM {db}.decision_log")) == 800
    assert int(ch.command(f"SELECT uniqExact(decision_id) FROM {db}.decision_log")) == 800
    assert int(ch.command(f"SELECT count() FROM {db}.rejected_events WHERE kafka_topic = "
                          f"'{logged.decision_log_topic}'")) == 1


def _columns(n: int, now: datetime, **override) -> dict:
    ms = records.epoch_ms(now)
    columns = {name: [""] * n for name in records.NAMES}
    columns.update(decision_id=records.decision_ids(n), decided_at=[ms] * n, endpoint=["batch"] * n,
                   universal_id=[f"sf_{i:016x}" for i in range(n)], known_person=[True] * n,
                   send_after=[ms + 3_600_000] * n, send_before=[ms + 90_000_000] * n, latency_seconds=[0.0] * n,
                   trigger_at=[ms + 7_200_000] * n, delivery_at=[ms + 7_200_000] * n, arm=["treatment"] * n,
                   model_delivery_at=[ms + 7_200_000] * n, confidence=[0.5] * n, expected_engagement=[0.2] * n,
                   model_expected_engagement=[0.2] * n, fallback_level=["person"] * n, evidence=[3.0] * n,
                   control_share=[0.1] * n, snapshot_version=["t1.i0.r0"] * n, policy=["greedy"] * n,
                   exploration=[0.0] * n)
    columns.update(override)
    return columns


def test_malformed_messages_are_rejected_with_a_reason_and_lose_nothing_good(logged: Settings, ch) -> None:
    db = logged.clickhouse_database
    now = datetime.now(UTC)
    good = records.encode(_columns(3, now))[0][1]

    def doc(**change) -> bytes:
        body = orjson.loads(good)
        body.update(change)
        return orjson.dumps(body)

    bad = {
        b"": "payload: invalid JSON",
        b"[1, 2]": "record: expected a JSON object",
        doc(v=2): "v: must be 1",
        doc(rows=0): "rows: must be a positive count of decisions",
        doc(columns={**orjson.loads(good)["columns"], "arm": ["treatment"]}): "columns.arm: missing or not 3 values",
        records.encode(_columns(3, now, arm=["treatment", "placebo", "control"]))[0][1]:
            "columns.arm: not treatment or control",
        records.encode(_columns(3, now, policy=["greedy", "bandit", "random"]))[0][1]:
            "columns.policy: not greedy, thompson or random",
        doc(columns={**orjson.loads(good)["columns"], "policy": ["greedy"]}): "columns.policy: missing or not 3 values",
        records.encode(_columns(3, now, universal_id=["sf_1", "x", "y"]))[0][1]:
            "columns.universal_id: not sf_ + 16 lowercase hex",
        records.encode(_columns(3, now, decided_at=[0, 0, 0]))[0][1]:
            "columns: a time outside [2000, 2200) (epoch milliseconds)",
    }
    produce_all(logged, [(None, good), *((None, value) for value in bad), (None, good)],
                topic=logged.decision_log_topic)
    report = ingest_once(logged, ch, IngestOptions(), sink=DECISIONS, log=lambda _: None)
    assert report.inserted == 6 and report.rejected == len(bad)
    reasons = dict(ch.query(f"SELECT raw, reason FROM {db}.rejected_events").result_rows)
    assert {raw.encode() if isinstance(raw, str) else raw: reason for raw, reason in reasons.items()} == bad


def test_decisions_are_answered_and_lost_records_counted_when_kafka_is_down(logged: Settings, ch) -> None:
    down = logged.model_copy(update={"kafka_bootstrap_servers": f"127.0.0.1:{free_port()}",
                                     "decision_log_queue_size": 3})
    app, _ = app_for(down, ch, **{"message.timeout.ms": 1500})
    after, before = window()
    body = {"email": "Jane.Doe@gmail.com", "send_after": z(after), "send_before": z(before)}
    api = TestClient(app)  # no lifespan yet: nothing drains the queue
    for _ in range(5):
        assert api.post("/timing-decision", json=body).status_code == 200
    assert metric(api, 'sendflowr_api_decision_log_dropped_total{reason="queue_full"}') == 2
    assert metric(api, "sendflowr_api_decision_log_queued_total") == 3
    failed = 'sendflowr_api_decision_log_dropped_total{reason="delivery_failed"}'
    with TestClient(app) as running:  # the log's thread starts: Kafka is unreachable
        deadline = datetime.now(UTC) + timedelta(seconds=60)
        while metric(running, failed) < 3:  # the queued records time out in the producer
            assert datetime.now(UTC) < deadline, running.get("/metrics").text
        for _ in range(2):  # the queue has room again; decisions are still answered
            assert running.post("/timing-decision", json=body).status_code == 200
        assert metric(running, "sendflowr_api_decision_log_queued_total") == 5
    stats = app.state.decision_log.stats()
    assert stats["delivered"] == 0 and stats["queued"] == 5 and stats["pending"] == 0
    assert stats["dropped"]["queue_full"] == 2
    assert stats["dropped"]["delivery_failed"] + stats["dropped"]["shutdown"] == 5


def test_the_log_can_be_turned_off_and_says_so(logged: Settings, ch) -> None:
    off = logged.model_copy(update={"decision_log_topic": ""})
    app, _ = app_for(off, ch)
    after, before = window()
    with TestClient(app) as api:
        assert api.post("/timing-decision", json={"klaviyo_id": "k_kim", "send_after": z(after),
                                                  "send_before": z(before)}).status_code == 200
        assert metric(api, "sendflowr_api_decision_log_enabled") == 0
        assert metric(api, 'sendflowr_api_decision_log_dropped_total{reason="disabled"}') == 1


def test_the_table_has_exactly_the_record_fields(logged: Settings, ch) -> None:
    columns = [name for (name,) in ch.query(
        "SELECT name FROM system.columns WHERE database = {d:String} AND table = 'decision_log' ORDER BY position",
        parameters={"d": logged.clickhouse_database}).result_rows]
    assert columns == [*records.NAMES, "kafka_topic", "kafka_partition", "kafka_offset", "kafka_row", "ingested_at"]


def test_exploring_decisions_are_logged_with_their_policy(logged: Settings, ch) -> None:
    """With SENDFLOWR_API_EXPLORATION on, treatment decisions are recorded as thompson with the scale in force, the
    control arm as random; a message from an API before these fields lands as greedy decisions, not as a reject."""
    db = logged.clickhouse_database
    exploring = logged.model_copy(update={"api_exploration": 0.8})
    app, _ = app_for(exploring, ch)
    after, before = window()
    with TestClient(app) as api:
        single = api.post("/timing-decision", json={"email": "Jane.Doe@gmail.com", "send_after": z(after),
                                                    "send_before": z(before), "campaign_id": "spring"})
        assert single.status_code == 200
        batch = api.post("/timing-decisions", json={
            "send_after": z(after), "send_before": z(before), "campaign_id": "spring",
            "recipients": [{"email": f"p{i}@gmail.com", "message_id": f"b-{i}"} for i in range(400)]})
        assert batch.status_code == 200 and batch.json()["decided"] == 400
    now = datetime.now(UTC)
    before_the_fields = _columns(5, now)
    for name in records.ADDED:
        del before_the_fields[name]
    message = orjson.loads(records.encode(_columns(5, now))[0][1])
    message["columns"] = before_the_fields
    produce_all(logged, [(None, orjson.dumps(message))], topic=logged.decision_log_topic)
    report = ingest_once(logged, ch, IngestOptions(), sink=DECISIONS, log=lambda _: None)
    assert report.inserted == 406 and report.rejected == 0
    stored = rows(ch, db)
    served = [r for r in stored if r["snapshot_version"] != "t1.i0.r0"]
    assert len(served) == 401 and all(r["exploration"] == pytest.approx(0.8) for r in served)
    for r in served:
        assert r["policy"] == ("random" if r["arm_name"] == "control" else "thompson")
    assert {r["policy"] for r in served} == {"random", "thompson"}
    by_message = {r["message_id"]: r for r in served if r["endpoint"] == "batch"}
    for item in batch.json()["decisions"]:
        assert z(by_message[f"b-{item['index']}"]["delivery_at"]) == item["delivery_timestamp_utc"]
    old = [r for r in stored if r["snapshot_version"] == "t1.i0.r0"]
    assert len(old) == 5 and all(r["policy"] == "greedy" and r["exploration"] == 0.0 for r in old)
