"""Several ingestion writers at once (docs/INGESTION.md, "Several writers"): each owns the partitions of its slot
(p % N == k) under its own lease, and exactly-once holds with all of them running, one of them killed at a
dangerous point while another is in the middle of its load, and across a change of the writer layout.

The corpora come from test_ingest_exactly_once: ESP resends of an event id land at random keys, so copies of one
event id sit in partitions of different slots and the writers race for it.
"""

from __future__ import annotations

import itertools
import json
import threading

import pytest
from test_ingest_exactly_once import (
    assert_bookkeeping_counts_each_message_once,
    assert_exact,
    high_watermarks,
    make_corpus,
    produce,
    ranges_by_state,
    run_and_crash,
)

from sendflowr import lease
from sendflowr.clickhouse import get_client
from sendflowr.errors import SendflowrError
from sendflowr.ingest.run import Hooks, IngestOptions, IngestReport, ingest_once
from sendflowr.ingest.slots import WHOLE, Slot, parse_scope
from sendflowr.settings import Settings

# ------------------------------------------------------------------------------------------------ slots (unit)


def test_slots_own_exactly_their_partitions_and_overlap_when_they_share_one() -> None:
    for count in range(1, 7):
        slots = [Slot(k, count) for k in range(count)]
        for partition in range(40):
            assert sum(s.owns(partition) for s in slots) == 1  # every partition has exactly one owner
    layouts = [Slot(k, n) for n in range(1, 9) for k in range(n)]
    for a, b in itertools.product(layouts, layouts):
        shared = any(a.owns(p) and b.owns(p) for p in range(a.count * b.count))
        assert a.overlaps(b) == shared, (a, b)


def test_scopes_name_the_slot_and_parse_back() -> None:
    assert WHOLE.scope("sendflowr.events") == "sendflowr.events"
    assert Slot(1, 4).scope("sendflowr.events") == "sendflowr.events#1/4"
    for slot in (WHOLE, Slot(0, 2), Slot(3, 4)):
        assert parse_scope(slot.scope("t.x-1")) == ("t.x-1", slot)
    with pytest.raises(SendflowrError, match="slot 2 of 2"):
        Slot(2, 2)


# ------------------------------------------------------------------------------------------------ leases


@pytest.mark.integration
def test_slot_leases_exclude_only_writers_that_share_a_partition(settings: Settings, ch) -> None:
    db, topic = settings.clickhouse_database, settings.kafka_topic

    def refused(slot: Slot) -> bool:
        try:
            with lease.hold(ch, db, topic, f"probe-{slot}", slot=slot):
                return False
        except lease.LeaseHeld:
            return True

    with lease.hold(ch, db, topic, "holder", slot=Slot(0, 2)):
        assert not refused(Slot(1, 2))
        assert not refused(Slot(1, 4)) and not refused(Slot(3, 4))
        assert refused(WHOLE) and refused(Slot(0, 2)) and refused(Slot(2, 4)) and refused(Slot(0, 4))
        with lease.hold(ch, db, topic, "other", slot=Slot(1, 2)):
            assert refused(WHOLE) and refused(Slot(1, 4))
    assert not refused(WHOLE)


# ------------------------------------------------------------------------------------------------ running at once

SLOTS = (Slot(0, 2), Slot(1, 2))


class BackgroundWriter(threading.Thread):
    """One writer run of `slot` (until caught up) in a thread of this process; `report` holds its IngestReport or
    the exception it raised."""

    def __init__(self, settings: Settings, slot: Slot, hooks: Hooks, **options):
        super().__init__(daemon=True)
        self.settings, self.hooks, self.report = settings, hooks, None
        self.options = IngestOptions(slot=slot, until_caught_up=True, **options)
        self.start()

    def run(self) -> None:
        client = get_client(self.settings)
        try:
            self.report = ingest_once(self.settings, client, self.options, log=lambda _m: None, hooks=self.hooks)
        except BaseException as exc:  # reported by the test thread
            self.report = exc
        finally:
            client.close()

    def join(self, timeout: float | None = 300) -> None:
        super().join(timeout)
        assert not self.is_alive()


class Rendezvous(Hooks):
    """Each writer waits at its first load for the other: both hold their slot leases and load at the same time."""

    def __init__(self, barrier: threading.Barrier):
        self.barrier, self.met = barrier, False

    def after_stage(self) -> None:
        if not self.met:
            self.met = True
            self.barrier.wait(timeout=60)


def run_writers(settings: Settings, slots: tuple[Slot, ...], hooks: list[Hooks], **options) -> list[object]:
    writers = [BackgroundWriter(settings, slot, hook, **options) for slot, hook in zip(slots, hooks, strict=True)]
    for writer in writers:
        writer.join()
    return [writer.report for writer in writers]


@pytest.mark.integration
def test_two_writers_over_disjoint_slots_land_every_event_once(settings: Settings, ch) -> None:
    corpus = make_corpus(unique=6000, duplicates=1500, invalid=150, tag="writers")
    produce(settings, corpus)
    barrier = threading.Barrier(2)
    hooks = [Rendezvous(barrier), Rendezvous(barrier)]

    # One attempt each: both event-id sections start together, over resends of the same ids in both slots.
    reports = run_writers(settings, SLOTS, hooks, attempt_messages=1_000_000)
    assert all(isinstance(r, IngestReport) for r in reports), reports
    assert all(h.met for h in hooks) and not barrier.broken  # they really loaded at the same time
    for slot, report in zip(SLOTS, reports, strict=True):
        assert set(report.partitions) == {p for p in range(settings.kafka_partitions) if slot.owns(p)}
        assert set(report.lag) == set(report.partitions) and not any(report.lag.values())
    assert sum(r.inserted for r in reports) == corpus.unique
    assert sum(r.duplicates for r in reports) == corpus.duplicates
    assert sum(r.rejected for r in reports) == corpus.invalid
    assert_exact(settings, corpus, ch)
    assert_bookkeeping_counts_each_message_once(settings, corpus, ch)


@pytest.mark.integration
def test_writers_in_many_attempts_take_turns_only_for_event_ids(settings: Settings, ch) -> None:
    corpus = make_corpus(unique=8000, duplicates=1200, invalid=100, tag="turns")
    produce(settings, corpus)
    barrier = threading.Barrier(2)
    reports = run_writers(settings, SLOTS, [Rendezvous(barrier), Rendezvous(barrier)],
                          attempt_messages=800, batch_messages=400)
    assert all(isinstance(r, IngestReport) for r in reports), reports
    committed, _ = ranges_by_state(ch, settings)
    assert len(committed) > 2 * settings.kafka_partitions  # several attempts per writer, interleaved
    assert_exact(settings, corpus, ch)
    assert_bookkeeping_counts_each_message_once(settings, corpus, ch)


# ------------------------------------------------------------------------------------------------ crashes

class PauseAtFirstLoad(Hooks):
    def __init__(self):
        self.paused, self.resume = threading.Event(), threading.Event()

    def after_stage(self) -> None:
        if not self.paused.is_set():
            self.paused.set()
            assert self.resume.wait(timeout=240), "never resumed"


@pytest.mark.integration
@pytest.mark.parametrize("point, nth, left", [("insert", 1, "inside the event-id section"),
                                              ("insert", 2, "between the events insert and its bookkeeping"),
                                              ("stage", 1, "right after staging")])
def test_writer_killed_while_the_other_is_loading(settings: Settings, ch, point: str, nth: int, left: str) -> None:
    """Writer 1/2 stages and stops in the middle of its load; writer 0/2 dies {left} (its process gone, its
    leases and staging left behind), then a new 0/2 run replays the dead attempt and ingests the rest while
    1/2 is still mid-load. 1/2 then finishes: nothing of its staging was touched, nothing is doubled."""
    corpus = make_corpus(unique=5000, duplicates=800, invalid=120, tag=f"kill-{point}-{nth}")
    produce(settings, corpus)
    other = PauseAtFirstLoad()
    background = BackgroundWriter(settings, SLOTS[1], other)
    try:
        _killed_and_replayed_while_paused(settings, ch, point, nth, other)
    finally:
        other.resume.set()
    background.join()
    assert isinstance(background.report, IngestReport), background.report
    # The dead process's last staging insert may land in the endpoint after the replay cleared its slot's staging
    # (the request was sent before the kill): the slot's next run deletes it and finds nothing new to ingest.
    after = ingest_once(settings, ch, IngestOptions(slot=SLOTS[0]), log=lambda _m: None)
    assert (after.messages, after.replayed) == (0, False)
    assert_exact(settings, corpus, ch)
    assert_bookkeeping_counts_each_message_once(settings, corpus, ch)


def _killed_and_replayed_while_paused(settings: Settings, ch, point: str, nth: int, other: PauseAtFirstLoad) -> None:
    assert other.paused.wait(timeout=120)

    out = run_and_crash(settings, point, nth=nth, per_attempt=1000, slot="0/2")
    assert "crashing after" in out
    _, pending = ranges_by_state(ch, settings)
    assert {r.partition for r in pending if SLOTS[0].owns(r.partition)}  # the dead writer's attempt (1/2 has its own)
    db = settings.clickhouse_database
    assert ch.command(f"SELECT count() FROM {db}.ingest_staging WHERE startsWith(attempt_id, "
                      f"'{SLOTS[1].scope(settings.kafka_topic)}~')") > 0  # 1/2 is mid-load

    replay = ingest_once(settings, ch, IngestOptions(slot=SLOTS[0], until_caught_up=True, attempt_messages=1000),
                         log=lambda _m: None)
    assert replay.replayed and set(replay.lag) == {0, 2} and not any(replay.lag.values())
    assert not other.resume.is_set()  # 1/2 was mid-load for all of it


@pytest.mark.integration
def test_a_crashed_whole_topic_attempt_is_replayed_whole(settings: Settings, ch) -> None:
    """The layout changes from one writer to two right after a crash: no slot may replay part of the attempt
    (its token covers all four ranges), so both refuse and say what to do; one whole-topic run replays it."""
    corpus = make_corpus(unique=3000, duplicates=300, invalid=60, tag="relayout")
    produce(settings, corpus)
    run_and_crash(settings, "insert", nth=2)  # event_ids and events of all four partitions written, not committed
    for slot in SLOTS:
        with pytest.raises(SendflowrError, match=r"partitions \[0, 1, 2, 3\].*SENDFLOWR_INGEST_WRITERS=1"):
            ingest_once(settings, ch, IngestOptions(slot=slot), log=lambda _m: None)
    replay = ingest_once(settings, ch, IngestOptions(), log=lambda _m: None)
    assert replay.replayed
    assert_exact(settings, corpus, ch)
    assert_bookkeeping_counts_each_message_once(settings, corpus, ch)


@pytest.mark.integration
def test_two_crashed_slot_attempts_are_replayed_one_by_one(settings: Settings, ch) -> None:
    """Both slots die, then the layout goes back to one writer: it replays each dead attempt on its own (each
    with the token it had), never the two as one attempt."""
    corpus = make_corpus(unique=4000, duplicates=600, invalid=80, tag="back-to-one")
    produce(settings, corpus)
    run_and_crash(settings, "insert", nth=2, slot="0/2")
    run_and_crash(settings, "insert", nth=1, slot="1/2")
    _, pending = ranges_by_state(ch, settings)
    assert {r.partition for r in pending} == {0, 1, 2, 3}

    staged: list[set[int]] = []

    class WatchReplays(Hooks):
        def after_stage(self) -> None:
            staged.append({p for (p,) in ch.query(
                f"SELECT DISTINCT kafka_partition FROM {settings.clickhouse_database}.ingest_staging").result_rows})

    report = ingest_once(settings, ch, IngestOptions(until_caught_up=True), log=lambda _m: None, hooks=WatchReplays())
    assert report.replayed
    assert staged[:2] in ([{0, 2}, {1, 3}], [{1, 3}, {0, 2}])  # one dead attempt at a time
    assert report.lag == {p: 0 for p in high_watermarks(settings)}
    assert_exact(settings, corpus, ch)
    assert_bookkeeping_counts_each_message_once(settings, corpus, ch)


# ------------------------------------------------------------------------------------------------ Dagster


@pytest.mark.integration
def test_the_sensor_launches_one_run_per_idle_slot_with_new_messages(settings: Settings) -> None:
    from confluent_kafka import Producer
    from dagster import build_sensor_context, instance_for_test, materialize, validate_run_config
    from dagster_resources import resource_for

    from sendflowr.kafka_io import producer_config
    from sendflowr_assets.definitions import defs
    from sendflowr_assets.defs.ingest.assets import events
    from sendflowr_assets.defs.ingest.sensors import INGEST_JOB, INGEST_SLOT_TAG, requests

    # The events topic only: the session's broker may hold a decision-log topic other tests wrote, whose sink the
    # sensor would then configure too (this test materializes `events` alone).
    settings = settings.model_copy(update={"decision_log_topic": f"decisions-{settings.kafka_topic}"})
    # Partitions 0..3 under three writers: slot 0 owns 0 and 3, slot 1 owns 1, slot 2 owns 2; 2 stays empty.
    producer = Producer(producer_config(settings))
    for partition in (0, 1, 3):
        for i in range(5):
            producer.produce(settings.kafka_topic, value=json.dumps({
                "event_id": f"p{partition}-{i}", "event_type": "opened", "occurred_at": "2026-10-01T10:00:00Z",
                "identifiers": {"email": f"person{i}@example.com"}}).encode(), partition=partition)
    assert producer.flush(30) == 0
    job, resource = defs.resolve_job_def(INGEST_JOB), resource_for(settings)
    with instance_for_test() as instance:
        def tick() -> list:
            with build_sensor_context(instance=instance, resources={"sendflowr": resource}) as context:
                return getattr(requests(context, context.resources.sendflowr, 3), "run_requests", [])

        launched = tick()
        assert [r.tags[INGEST_SLOT_TAG] for r in launched] == ["0", "1"]  # slot 2's partition has nothing new
        for slot, request in zip((0, 1), launched, strict=True):
            config = validate_run_config(job, request.run_config)["ops"]["events"]["config"]
            assert (config["slot"], config["writers"]) == (slot, 3)
        assert len({r.run_key for r in launched}) == 2
        instance.create_run_for_job(job_def=job, run_config=launched[1].run_config, tags=launched[1].tags)
        assert [r.tags[INGEST_SLOT_TAG] for r in tick()] == ["0"]  # slot 1's run has not ended yet

        result = materialize([events], resources={"sendflowr": resource}, run_config=launched[0].run_config)
        assert result.asset_materializations_for_node("events")[0].metadata["rows_inserted"].value == 10
        assert tick() == []  # slot 0 caught up, slot 1 still running
