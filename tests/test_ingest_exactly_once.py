"""Exactly-once ingestion against the real broker and the real ClickHouse engine, under the failures that
matter: a process killed between insert and bookkeeping or right after staging, a broker restart, the
ClickHouse endpoint going away mid-run, two runs at once, a consumer-group rebalance, and a crashed run's
planned range replayed after more messages arrived.

Every test produces a known corpus (unique valid events, ESP duplicates of some event ids at other
offsets, malformed messages) and asserts the exact final contents of `events`, `event_ids` and
`rejected_events`, and that the asset-check queries of sendflowr/ingest/checks.py pass.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from confluent_kafka import Consumer, TopicPartition

from sendflowr import lease
from sendflowr.clickhouse import get_client
from sendflowr.ingest import checks, consume, plan
from sendflowr.ingest.plan import OffsetRange
from sendflowr.ingest.run import Hooks, IngestOptions, IngestReport, ingest_once
from sendflowr.kafka_io import produce_all
from sendflowr.local import chdb_server, processes
from sendflowr.local.kafka_broker import LocalKafka
from sendflowr.settings import PROJECT_ROOT, Settings

pytestmark = pytest.mark.integration

CRASH_EXIT = 77
EVENT_TYPES = ("sent", "delivered", "opened", "clicked", "bounced", "unsubscribed", "complained")
BASE_TIME = datetime.now(UTC).replace(microsecond=0) - timedelta(days=3)


# ------------------------------------------------------------------------------------------------ corpus


def _event(event_id: str, i: int) -> dict:
    event = {
        "event_id": event_id,
        "event_type": EVENT_TYPES[i % len(EVENT_TYPES)],
        "occurred_at": (BASE_TIME + timedelta(seconds=i)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
        "identifiers": {"email": f"Person{i % 997}@Example.com"},
        "esp": "sendgrid",
        "message_id": f"m-{i}",
    }
    if i % 3 == 0:
        event["identifiers"]["klaviyo_id"] = f"k{i % 997}"
    if event["event_type"] == "bounced":
        event["bounce_type"] = "soft"
    if event["event_type"] == "opened":
        event["machine_open"] = i % 2 == 0
    return event


def _invalid(i: int, tag: str) -> bytes:
    """One malformed message; the kind cycles with i, the bytes are unique per (tag, i)."""
    good = _event(f"{tag}-bad-{i}", i)
    kind = i % 8
    if kind == 0:
        return f'{{"event_id": "{tag}-bad-{i}", broken'.encode()
    if kind == 1:
        return b"\xff\xfe" + f"{tag}-{i}".encode()
    if kind == 2:
        return json.dumps([tag, i]).encode()
    if kind == 3:
        good.pop("event_id")
        good["message_id"] = f"{tag}-bad-{i}"
    elif kind == 4:
        good["event_type"] = "exploded"
    elif kind == 5:
        good["occurred_at"] = "2026-01-01T10:00:00"  # no offset
    elif kind == 6:
        good["identifiers"] = {}
    else:
        good["surprise"] = True
    return json.dumps(good).encode()


@dataclass
class Corpus:
    messages: list[tuple[bytes | None, bytes]]
    event_ids: set[str]
    duplicates: int
    invalid: int

    @property
    def unique(self) -> int:
        return len(self.event_ids)

    def __add__(self, other: Corpus) -> Corpus:
        overlap = len(self.event_ids & other.event_ids)
        return Corpus(
            self.messages + other.messages,
            self.event_ids | other.event_ids,
            self.duplicates + other.duplicates + overlap,
            self.invalid + other.invalid,
        )


def _parsed(message: tuple[bytes | None, bytes]) -> dict | None:
    try:
        event = json.loads(message[1])
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


def make_corpus(
    unique: int, duplicates: int, invalid: int, tag: str, seed: int = 7, resend_from: Corpus | None = None
) -> Corpus:
    """`unique` new events, `duplicates` extra copies of their ids (or of `resend_from`'s) and `invalid`
    malformed messages, shuffled, keyed at random so they spread over every partition."""
    rng = random.Random(seed)
    fresh = [_event(f"{tag}-{i}", i) for i in range(unique)]
    payloads = [json.dumps(e, separators=(",", ":")).encode() for e in fresh]
    pool = (
        [e for e in map(_parsed, resend_from.messages) if e and e.get("event_id") in resend_from.event_ids]
        if resend_from
        else fresh
    )
    for n in range(duplicates):
        copy = dict(rng.choice(pool))
        copy["ip"] = f"10.0.{n % 250}.{n % 7}"  # an ESP resend: same event_id, not necessarily the same bytes
        payloads.append(json.dumps(copy).encode())
    payloads += [_invalid(i, tag) for i in range(invalid)]
    rng.shuffle(payloads)
    messages = [(f"key-{rng.randrange(10_000)}".encode(), p) for p in payloads]
    return Corpus(messages, {e["event_id"] for e in fresh}, duplicates, invalid)


def produce(settings: Settings, corpus: Corpus) -> None:
    report = produce_all(settings, corpus.messages)
    assert report.sent == len(corpus.messages)


# ------------------------------------------------------------------------------------------------ asserts


def high_watermarks(settings: Settings) -> dict[int, int]:
    consumer = consume.make_consumer(settings, group=f"probe-{uuid.uuid4().hex[:8]}")
    try:
        return {p: m.high for p, m in consume.watermarks(consumer, settings.kafka_topic).items()}
    finally:
        consumer.close()


def group_offsets(settings: Settings) -> dict[int, int]:
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "group.id": settings.kafka_consumer_group,
            "enable.auto.commit": False,
        }
    )
    try:
        parts = [TopicPartition(settings.kafka_topic, p) for p in range(settings.kafka_partitions)]
        return {tp.partition: tp.offset for tp in consumer.committed(parts, timeout=15)}
    finally:
        consumer.close()


def assert_exact(settings: Settings, corpus: Corpus, client=None) -> None:
    """events/event_ids hold each valid event_id exactly once, every malformed message is rejected once,
    every offset is covered by a committed range, nothing is pending, and the asset checks pass."""
    own = client is None
    client = client or get_client(settings)
    db, topic = settings.clickhouse_database, settings.kafka_topic
    try:
        rows, distinct = client.query(f"SELECT count(), uniqExact(event_id) FROM {db}.events").result_rows[0]
        assert (rows, distinct) == (corpus.unique, corpus.unique)
        ids = {r[0] for r in client.query(f"SELECT event_id FROM {db}.events").result_rows}
        assert ids == corpus.event_ids
        assert client.query(f"SELECT count(), uniqExact(event_id) FROM {db}.event_ids").result_rows[0] == (
            corpus.unique,
            corpus.unique,
        )
        rejected, places = client.query(
            f"SELECT count(), uniqExact(kafka_partition, kafka_offset) FROM {db}.rejected_events"
        ).result_rows[0]
        assert (rejected, places) == (corpus.invalid, corpus.invalid)

        committed, pending = plan.ingestion_state(client, db, topic)
        assert pending == []
        highs = high_watermarks(settings)
        assert {p: committed.get(p, 0) for p in highs} == highs
        # every offset is accounted for exactly once: an event, a duplicate or a reject
        assert sum(highs.values()) == len(corpus.messages)
        # per-attempt scratch (Memory tables) is deleted with each attempt
        assert client.command(f"SELECT count() FROM {db}.ingest_staging") == 0
        assert client.command(f"SELECT count() FROM {db}.ingest_known_ids") == 0

        for finding in (
            checks.duplicate_event_ids(client, db),
            checks.future_events(client, db),
            checks.offset_gaps(client, db, topic),
        ):
            assert finding.passed, finding.facts
    finally:
        if own:
            client.close()


def committed_stats(client, settings: Settings) -> tuple[int, int, int]:
    """(messages, valid, rejected) summed over the committed ranges."""
    row = client.query(
        f"SELECT sum(messages), sum(valid), sum(rejected) "
        f"FROM {settings.clickhouse_database}.ingest_ranges "
        "WHERE kafka_topic = {topic:String} AND state = 'committed'",
        parameters={"topic": settings.kafka_topic},
    ).result_rows[0]
    return tuple(int(v) for v in row)


def assert_caught_up(settings: Settings, corpus: Corpus, client, report) -> None:
    """Nothing left behind: no lag, the events exactly the corpus's, each message counted once."""
    assert report.lag == {p: 0 for p in range(settings.kafka_partitions)}
    assert_exact(settings, corpus, client)
    assert_bookkeeping_counts_each_message_once(settings, corpus, client)


def assert_bookkeeping_counts_each_message_once(settings: Settings, corpus, client) -> None:
    assert committed_stats(client, settings) == (
        len(corpus.messages),
        corpus.unique + corpus.duplicates,
        corpus.invalid,
    )


def catch_up(settings: Settings, client, **options) -> IngestReport:
    return ingest_once(settings, client, IngestOptions(until_caught_up=True, **options), log=lambda _m: None)


# ------------------------------------------------------------------------------------------------ crashes

CRASHING_RUN = """
import os, sys
from sendflowr.clickhouse import get_client
from sendflowr.ingest.run import Hooks, IngestOptions, ingest_once
from sendflowr.ingest.slots import Slot
from sendflowr.settings import Settings

point, nth, per_partition = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
per_attempt = int(sys.argv[4]) if len(sys.argv) > 4 else 200_000
slot = Slot(*map(int, sys.argv[5].split("/"))) if len(sys.argv) > 5 else Slot()

class Crash(Hooks):
    inserts = 0

    def after_stage(self):
        if point == "stage":
            print("crashing after stage", flush=True)
            os._exit(77)

    def after_insert(self, rng):
        Crash.inserts += 1
        if point == "insert" and Crash.inserts == nth:
            print(f"crashing after insert of {rng}", flush=True)
            os._exit(77)

settings = Settings()
ingest_once(settings, get_client(settings),
            IngestOptions(max_messages_per_partition=per_partition, until_caught_up=True, slot=slot,
                          attempt_messages=per_attempt, batch_messages=min(50_000, per_attempt)), hooks=Crash())
print("finished without crashing", flush=True)
"""


def run_and_crash(settings: Settings, point: str, nth: int = 1, per_partition: int = 1_000_000,
                  per_attempt: int = 200_000, slot: str = "0/1") -> str:
    """An ingestion run (of writer `slot`) in its own process, killed (os._exit) at `point`: nothing is cleaned up."""
    proc = subprocess.run(
        [sys.executable, "-c", CRASHING_RUN, point, str(nth), str(per_partition), str(per_attempt), slot],
        env={**os.environ, **settings.as_env()},
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == CRASH_EXIT, (
        f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return proc.stdout


def ranges_by_state(client, settings: Settings) -> tuple[list[OffsetRange], list[OffsetRange]]:
    committed, pending = [], []
    rows = client.query(
        f"SELECT kafka_partition, start_offset, end_offset, max(state) = 'committed' FROM "
        f"{settings.clickhouse_database}.ingest_ranges WHERE kafka_topic = {{topic:String}} "
        f"GROUP BY kafka_partition, start_offset, end_offset ORDER BY kafka_partition, start_offset",
        parameters={"topic": settings.kafka_topic},
    ).result_rows
    for partition, start, end, done in rows:
        (committed if done else pending).append(OffsetRange(settings.kafka_topic, partition, start, end))
    return committed, pending


# ------------------------------------------------------------------------------------------------ tests


def test_second_run_ingests_nothing_new(settings: Settings, ch) -> None:
    corpus = make_corpus(unique=3000, duplicates=250, invalid=80, tag="plain")
    produce(settings, corpus)

    first = ingest_once(settings, ch, log=lambda _m: None)
    assert first.messages == len(corpus.messages)
    assert first.inserted == corpus.unique
    assert first.duplicates == corpus.duplicates
    assert first.rejected == corpus.invalid
    assert not first.replayed
    assert first.lag == {p: 0 for p in range(settings.kafka_partitions)}
    assert_exact(settings, corpus, ch)
    assert group_offsets(settings) == high_watermarks(settings)

    second = ingest_once(settings, ch, log=lambda _m: None)
    assert (second.messages, second.inserted, second.rejected, second.duplicates) == (0, 0, 0, 0)
    assert second.partitions == {}
    assert_caught_up(settings, corpus, ch, second)


def test_an_event_is_its_id_in_the_hour_it_occurred(settings: Settings, ch) -> None:
    """The contract's copies (sendflowr/schemas/event.v1.json): the same event_id with an occurred_at in the same UTC
    hour is a copy, dropped whether it comes in a later run or in the same attempt; the same id in another hour is
    a second event, kept, and the reuse is reported by its own check while the duplicate check passes."""
    hour = BASE_TIME.replace(minute=0, second=0)

    def at(event_id: str, moment: datetime, n: int) -> tuple[bytes, bytes]:
        event = _event(event_id, n) | {"occurred_at": moment.strftime("%Y-%m-%dT%H:%M:%S.000Z"), "ip": f"10.0.0.{n}"}
        return b"one partition", json.dumps(event).encode()  # in order: the first copy is the one produced first

    produce_all(settings, [at("x", hour + timedelta(minutes=15), 1), at("y", hour + timedelta(minutes=20), 2)])
    first = ingest_once(settings, ch, log=lambda _m: None)
    assert (first.inserted, first.duplicates) == (2, 0)
    produce_all(settings, [at("x", hour + timedelta(minutes=40), 3),  # same hour as the first x: a copy
                           at("x", hour + timedelta(days=1, minutes=15), 4),  # another hour: a second event
                           at("z", hour + timedelta(hours=2, minutes=5), 5),
                           at("z", hour + timedelta(hours=3, minutes=5), 6),  # another hour, same attempt
                           at("z", hour + timedelta(hours=2, minutes=50), 7)])  # a copy of the first z, same attempt
    second = ingest_once(settings, ch, log=lambda _m: None)
    assert (second.inserted, second.duplicates) == (3, 2)
    db = settings.clickhouse_database
    kept = ch.query(f"SELECT event_id, occurred_at, ip FROM {db}.events ORDER BY event_id, occurred_at").result_rows
    assert [(e, at.replace(tzinfo=UTC) - hour, ip) for e, at, ip in kept] == [
        ("x", timedelta(minutes=15), "10.0.0.1"), ("x", timedelta(days=1, minutes=15), "10.0.0.4"),
        ("y", timedelta(minutes=20), "10.0.0.2"),
        ("z", timedelta(hours=2, minutes=5), "10.0.0.5"), ("z", timedelta(hours=3, minutes=5), "10.0.0.6")]
    assert ch.query(f"SELECT event_id, toString(occurred_hour) FROM {db}.event_ids ORDER BY event_id, occurred_hour"
                    ).result_rows == [(e, at.replace(minute=0, second=0, microsecond=0).strftime("%Y-%m-%d %H:%M:%S"))
                                      for e, at, _ in kept]
    assert checks.duplicate_event_ids(ch, db).passed
    reused = checks.reused_event_ids(ch, db)
    assert not reused.passed and reused.facts["examples"] == [["x", "2"], ["z", "2"]]


def test_killed_between_insert_and_bookkeeping(settings: Settings, ch) -> None:
    corpus = make_corpus(unique=4000, duplicates=400, invalid=100, tag="kill-insert")
    produce(settings, corpus)
    per_partition = 500  # about three rounds of four ranges

    # Each round loads event_ids, events, rejected_events. Round one (loads 1-3) commits; round two dies
    # right after writing `events` (load 5), before its rejects and its 'committed' row.
    out = run_and_crash(settings, "insert", nth=5, per_partition=per_partition)
    assert "crashing after insert" in out
    committed, pending = ranges_by_state(ch, settings)
    assert len(committed) == 4 and len(pending) == 4
    db = settings.clickhouse_database
    inserted_uncommitted = ch.command(
        f"SELECT count() FROM {db}.events WHERE kafka_offset >= {per_partition}"
    )
    assert inserted_uncommitted > 0  # round two's events are in `events` without their 'committed' row

    report = catch_up(settings, ch, max_messages_per_partition=per_partition)
    assert report.replayed
    # The bookkeeping counts each event once, also those the dead run had already inserted.
    assert_caught_up(settings, corpus, ch, report)


def test_killed_while_the_next_attempt_is_staged(settings: Settings, ch) -> None:
    """One pass, many attempts: attempt two dies after writing `events` while attempt three may already be
    staged. Only attempt two is left planned; the replay loads exactly it, then the rest follows."""
    corpus = make_corpus(unique=6000, duplicates=500, invalid=150, tag="kill-pipelined")
    produce(settings, corpus)

    out = run_and_crash(settings, "insert", nth=5, per_attempt=1000)  # attempt one: loads 1-3, two: 4-6
    assert "crashing after insert of events" in out
    committed, pending = ranges_by_state(ch, settings)
    assert committed and pending
    assert 0 < sum(r.size for r in committed) < len(corpus.messages)
    assert sum(r.size for r in pending) < len(corpus.messages) - sum(r.size for r in committed)
    ends = {}
    for r in committed:
        ends[r.partition] = max(ends.get(r.partition, 0), r.end)
    assert all(r.start == ends.get(r.partition, 0) for r in pending)  # right after the committed attempt
    in_pending = " OR ".join(
        f"(kafka_partition = {r.partition} AND kafka_offset >= {r.start} AND kafka_offset < {r.end})" for r in pending
    )
    db = settings.clickhouse_database
    assert ch.command(f"SELECT count() FROM {db}.events WHERE {in_pending}") > 0  # written, not committed

    report = catch_up(settings, ch, attempt_messages=1000, batch_messages=500)
    assert report.replayed
    assert_caught_up(settings, corpus, ch, report)


def test_many_attempts_in_one_pass_report_every_message(settings: Settings, ch) -> None:
    corpus = make_corpus(unique=5000, duplicates=400, invalid=100, tag="attempts")
    produce(settings, corpus)

    report = ingest_once(settings, ch, IngestOptions(attempt_messages=700, batch_messages=300), log=lambda _m: None)
    assert (report.messages, report.inserted, report.duplicates, report.rejected) == (
        len(corpus.messages),
        corpus.unique,
        corpus.duplicates,
        corpus.invalid,
    )
    committed, _ = ranges_by_state(ch, settings)
    assert len(committed) > settings.kafka_partitions  # several attempts, each with its own ranges
    assert {p: (s.start, s.end) for p, s in report.partitions.items()} == {
        p: (0, high) for p, high in high_watermarks(settings).items()
    }
    assert_exact(settings, corpus, ch)


def test_killed_right_after_staging(settings: Settings, ch) -> None:
    corpus = make_corpus(unique=3000, duplicates=300, invalid=60, tag="kill-stage")
    produce(settings, corpus)

    out = run_and_crash(settings, "stage")
    assert "crashing after stage" in out
    db = settings.clickhouse_database
    assert ch.command(f"SELECT count() FROM {db}.ingest_staging") == len(corpus.messages)  # left behind
    assert ch.command(f"SELECT count() FROM {db}.events") == 0
    _, pending = ranges_by_state(ch, settings)
    assert len(pending) == settings.kafka_partitions

    report = ingest_once(settings, ch, log=lambda _m: None)
    assert report.replayed
    assert (report.inserted, report.duplicates, report.rejected) == (
        corpus.unique,
        corpus.duplicates,
        corpus.invalid,
    )
    assert_exact(settings, corpus, ch)


def test_broker_restarted_mid_run(settings: Settings, kafka: LocalKafka) -> None:
    corpus = make_corpus(unique=190_000, duplicates=6_000, invalid=4_000, tag="restart")
    produce(settings, corpus)
    staged_once = threading.Event()
    restarted = threading.Event()
    outcome: dict[str, object] = {}

    def log(message: str) -> None:
        if message.startswith("read "):
            staged_once.set()

    def restart_broker() -> None:
        try:
            if staged_once.wait(timeout=120):
                kafka.stop()
                time.sleep(1)
                kafka.start()
        except BaseException as exc:  # reported by the test thread
            outcome["restart_error"] = exc
        finally:
            restarted.set()

    restarter = threading.Thread(target=restart_broker, daemon=True)
    restarter.start()
    client = get_client(settings)
    try:
        try:
            outcome["report"] = ingest_once(settings, client, IngestOptions(batch_messages=5_000), log=log)
        except Exception as exc:  # the run may fail while the broker is away; that is allowed
            outcome["error"] = exc
        assert restarted.wait(timeout=180)
        assert "restart_error" not in outcome, outcome
        assert staged_once.is_set()
        report = catch_up(settings, client)
        assert report.lag == {p: 0 for p in range(settings.kafka_partitions)}
        assert_exact(settings, corpus, client)
    finally:
        restarted.wait(timeout=180)
        if not kafka.is_running():
            kafka.start()
        client.close()


def test_clickhouse_endpoint_unavailable_during_insert(settings: Settings) -> None:
    corpus = make_corpus(unique=3000, duplicates=300, invalid=120, tag="ch-down")
    produce(settings, corpus)

    class StopEndpoint(Hooks):
        inserts = 0

        def after_insert(self, rng: OffsetRange) -> None:
            StopEndpoint.inserts += 1
            if StopEndpoint.inserts == 2:
                assert processes.stop(settings, chdb_server.PROCESS_NAME)

    try:
        client = get_client(settings)
        with pytest.raises(Exception):  # noqa: B017 - whatever the driver raises for a refused connection
            ingest_once(settings, client, log=lambda _m: None, hooks=StopEndpoint())
        client.close()
        assert StopEndpoint.inserts == 2
        assert not chdb_server.ping(settings)
    finally:
        chdb_server.start_background(settings)

    client = get_client(settings)
    try:
        committed, pending = ranges_by_state(client, settings)
        assert committed == [] and len(pending) == settings.kafka_partitions
        assert client.command(f"SELECT count() FROM {settings.clickhouse_database}.events") > 0
        report = ingest_once(settings, client, log=lambda _m: None)  # the dead run's lease does not block
        assert report.replayed
        assert report.lag == {p: 0 for p in range(settings.kafka_partitions)}
        assert_exact(settings, corpus, client)
    finally:
        client.close()


def test_two_runs_at_once(settings: Settings) -> None:
    corpus = make_corpus(unique=4000, duplicates=300, invalid=50, tag="twins")
    produce(settings, corpus)
    start = threading.Barrier(2)
    finished = [threading.Event(), threading.Event()]
    both_inside = threading.Event()
    inside = [threading.Event(), threading.Event()]
    results: list[object] = [None, None]

    class HoldWhileTheOtherTries(Hooks):
        def __init__(self, me: int):
            self.me = me

        def after_stage(self) -> None:
            inside[self.me].set()
            if inside[1 - self.me].is_set():
                both_inside.set()
            finished[1 - self.me].wait(timeout=15)  # keep the lease until the rival gave up (or came in)

    def run(me: int) -> None:
        client = get_client(settings)
        try:
            start.wait()
            results[me] = ingest_once(settings, client, log=lambda _m: None, hooks=HoldWhileTheOtherTries(me))
        except Exception as exc:
            results[me] = exc
        finally:
            finished[me].set()
            client.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not both_inside.is_set(), "both runs held the lease at once"
    reports = [r for r in results if isinstance(r, IngestReport)]
    refused = [r for r in results if isinstance(r, lease.LeaseHeld)]
    assert len(reports) == 1 and len(refused) == 1, results
    assert reports[0].inserted == corpus.unique
    assert_exact(settings, corpus)


def test_lease_races_have_one_winner(settings: Settings) -> None:
    """Many bare lease races: at most one holder at any moment, never zero when nobody else holds it."""
    db = settings.clickhouse_database
    clients = [get_client(settings) for _ in range(3)]
    try:
        for trial in range(10):
            topic = f"race-{trial}"
            start = threading.Barrier(len(clients))
            holding: list[str] = []
            overlaps: list[int] = []
            lock = threading.Lock()

            def contend(
                i: int,
                topic: str = topic,
                start: threading.Barrier = start,
                holding: list[str] = holding,
                overlaps: list[int] = overlaps,
                lock: threading.Lock = lock,
            ) -> None:
                start.wait()
                try:
                    with lease.hold(clients[i], db, topic, f"run-{i}"):
                        with lock:
                            holding.append(f"run-{i}")
                            overlaps.append(len(holding))
                        time.sleep(0.02)
                        with lock:
                            holding.remove(f"run-{i}")
                except lease.LeaseHeld:
                    pass

            threads = [threading.Thread(target=contend, args=(i,)) for i in range(len(clients))]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=60)
            assert overlaps, f"trial {trial}: nobody got the lease"
            assert max(overlaps) == 1, f"trial {trial}: two holders at once"
    finally:
        for client in clients:
            client.close()


def test_consumer_group_rebalance_does_not_disturb_the_run(settings: Settings) -> None:
    corpus = make_corpus(unique=20_000, duplicates=1_000, invalid=200, tag="rebalance")
    produce(settings, corpus)
    staged = threading.Event()
    stop = threading.Event()
    intruder: dict[str, object] = {"assigned": [], "polled": 0}
    assigned = threading.Event()

    def on_assign(consumer, partitions) -> None:
        intruder["assigned"] = [p.partition for p in partitions]
        assigned.set()

    def intrude() -> None:
        staged.wait(timeout=60)
        other = Consumer(
            {
                "bootstrap.servers": settings.kafka_bootstrap_servers,
                "group.id": settings.kafka_consumer_group,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": 6000,
                "heartbeat.interval.ms": 500,
            }
        )
        try:
            other.subscribe([settings.kafka_topic], on_assign=on_assign)
            while not stop.is_set():
                for message in other.consume(num_messages=500, timeout=0.2):
                    if message.error() is None:
                        intruder["polled"] = int(intruder["polled"]) + 1
        finally:
            other.close()

    def log(message: str) -> None:
        if message.startswith("read ") and not staged.is_set():
            staged.set()
            assert assigned.wait(timeout=30), "the other group member never got an assignment"

    thread = threading.Thread(target=intrude, daemon=True)
    thread.start()
    client = get_client(settings)
    try:
        report = ingest_once(settings, client, IngestOptions(batch_messages=2_000), log=log)
    finally:
        stop.set()
        thread.join(timeout=30)
    try:
        assert sorted(intruder["assigned"]) == list(range(settings.kafka_partitions))
        assert report.messages == len(corpus.messages)
        assert (report.inserted, report.duplicates, report.rejected) == (
            corpus.unique,
            corpus.duplicates,
            corpus.invalid,
        )
        assert report.lag == {p: 0 for p in range(settings.kafka_partitions)}
        assert_exact(settings, corpus, client)
    finally:
        client.close()


def test_planned_range_replayed_before_newer_messages(settings: Settings, ch) -> None:
    first = make_corpus(unique=2000, duplicates=150, invalid=40, tag="early")
    produce(settings, first)
    run_and_crash(settings, "insert", nth=1)  # plans all four ranges, inserts one, dies
    _, planned = ranges_by_state(ch, settings)
    assert len(planned) == settings.kafka_partitions
    assert sum(r.size for r in planned) == len(first.messages)

    # Newer messages: more events plus ESP resends of early event ids.
    later = make_corpus(unique=1500, duplicates=200, invalid=30, tag="late", seed=11, resend_from=first)
    produce(settings, later)
    everything = first + later
    assert sum(high_watermarks(settings).values()) == len(everything.messages)

    staged_rounds: list[dict[int, tuple[int, int, int]]] = []

    class WatchStaging(Hooks):
        def after_stage(self) -> None:
            staged_rounds.append(
                {
                    p: (lo, hi, n)
                    for p, lo, hi, n in ch.query(
                        f"SELECT kafka_partition, min(kafka_offset), max(kafka_offset) + 1, count() "
                        f"FROM {settings.clickhouse_database}.ingest_staging GROUP BY kafka_partition"
                    ).result_rows
                }
            )

    report = ingest_once(settings, ch, log=lambda _m: None, hooks=WatchStaging())
    assert report.replayed
    # The first round staged exactly the planned ranges, nothing of the newer messages.
    assert staged_rounds[0] == {r.partition: (r.start, r.end, r.size) for r in planned}
    committed, pending = ranges_by_state(ch, settings)
    assert pending == []
    assert set(planned) <= set(committed)

    rest = ingest_once(settings, ch, log=lambda _m: None)  # the rest, if the replaying run left any
    assert rest.lag == {p: 0 for p in range(settings.kafka_partitions)}
    committed, _ = ranges_by_state(ch, settings)
    for r in planned:  # the newer messages came in ranges of their own, right after the planned ones
        after = [c for c in committed if c.partition == r.partition and c.start >= r.end]
        assert all(c.start == r.end for c in after[:1])
    assert_exact(settings, everything, ch)
