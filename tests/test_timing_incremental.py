"""Incremental timing runs on real Kafka and ClickHouse: after a full build, runs that read only the new events give
exactly the curves a full build with the same model gives, messages still open merge their late events and settle
later, identity merges move cells, and a dead run's rows stay invisible."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
import orjson
import pytest
from dagster import materialize
from dagster_resources import resource_for

from sendflowr.kafka_io import produce_all
from sendflowr.settings import Settings
from sendflowr.timing import incremental, versions
from sendflowr.timing.decide import HOURS
from sendflowr.timing.estimate import EstimatorParams
from sendflowr.timing.fit import Fit, read_inputs
from sendflowr.timing.owners import person_cohorts
from sendflowr.timing.signals import SignalRules
from sendflowr.timing.stats import person_stats
from sendflowr.timing.store import load_snapshot
from sendflowr_assets.defs.identity.assets import identity_graph
from sendflowr_assets.defs.ingest.assets import events
from sendflowr_assets.defs.timing.assets import timing_curves

pytestmark = pytest.mark.integration
HUMAN = {"user_agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/126.0", "ip": "84.1.2.3"}



def _event(kind: str, at: datetime, message: str, email: str | None, phone: str | None = None,
           **extra) -> tuple[None, bytes]:
    ids = {k: v for k, v in (("email", email), ("phone", phone)) if v}
    body = {"event_id": uuid.uuid4().hex, "occurred_at": at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "message_id": message, "event_type": kind, "identifiers": ids, "esp": "klaviyo",
            "campaign_id": "c1", "schema_version": 1, **extra}
    return None, orjson.dumps(body)


def _message(at: datetime, message: str, email: str, open_after: timedelta | None) -> list:
    out = [_event("delivered", at, message, email)]
    if open_after is not None:
        out.append(_event("opened", at + open_after, message, email, **HUMAN))
    return out


def _run(settings: Settings) -> dict:
    result = materialize([events, identity_graph, timing_curves], resources={"sendflowr": resource_for(settings)})
    assert result.success
    return {k: v.value for k, v in result.asset_materializations_for_node("timing_curves")[0].metadata.items()}


def _frozen_full(ch, settings: Settings, at: datetime) -> tuple[np.ndarray, np.ndarray]:
    """Every person's curve from ALL events, with the committed base's model: what an incremental run must equal."""
    db = settings.clickhouse_database
    params = EstimatorParams()
    base = incremental.base_of(ch, db)
    decay, priors, clusters = incremental.load_model(ch, db, base.version)
    inputs = read_inputs(ch, db, SignalRules(), params, observed_before=at)
    stats, _ = person_stats(inputs.messages, inputs.persons, params)
    code, names = person_cohorts(ch, db, stats.universal_id)
    lookup = {name: i for i, name in enumerate(priors.cohorts)}
    f = Fit(stats, decay, priors, np.array([lookup.get(n, 0) for n in names], np.int64)[code], params, clusters)
    return stats.universal_id, f.curves()[0]


def _assert_served_equals_frozen(ch, settings: Settings, at: datetime) -> None:
    ids, expected = _frozen_full(ch, settings, at)
    snap = load_snapshot(ch, settings.clickhouse_database)
    at_row = snap.positions(ids)
    assert (at_row >= 0).all()
    np.testing.assert_allclose(snap.curves[at_row], expected, rtol=2e-5, atol=1e-7)


def test_incremental_runs_equal_a_full_build_with_the_same_model(settings: Settings, ch, monkeypatch) -> None:
    db = settings.clickhouse_database
    now = datetime.now(UTC).replace(microsecond=0)
    clock = {"t": now}
    monkeypatch.setattr(incremental, "now_ms", lambda: int(clock["t"].timestamp() * 1000))
    monkeypatch.setattr(incremental, "MAX_NEW_SHARE", 100.0)  # tiny batches here: stay incremental
    history = []
    for day in range(20, 34, 2):  # settled history for ann, bob, cy: delivered 20-33 days ago, at their hours
        for who, hour, opened in (("ann", 3, True), ("bob", 20, True), ("cy", 9, False)):
            history += _message(now - timedelta(days=day) + timedelta(hours=hour), f"h-{who}-{day}",
                                f"{who}@gmail.com", timedelta(hours=1) if opened else None)
    history += _message(now - timedelta(days=2), "open-ann", "ann@gmail.com", None)  # still open, not opened yet
    history += _message(now - timedelta(days=1), "open-dee", "dee@gmail.com", None)  # open, never touched again
    produce_all(settings, history)
    first = _run(settings)
    assert not first.get("skipped") and incremental.base_of(ch, db) is not None
    base = incremental.base_of(ch, db)
    assert ch.command(f"SELECT countDistinct(message) FROM {db}.timing_open_messages") == 2
    _assert_served_equals_frozen(ch, settings, now)

    # Ann opens her open message a day late, bob gets a new message, eve arrives: an incremental run
    produce_all(settings, [
        _event("opened", now - timedelta(hours=20), "open-ann", "ann@gmail.com", **HUMAN),
        *_message(now - timedelta(hours=5), "new-bob", "bob@gmail.com", timedelta(hours=2)),
        *_message(now - timedelta(days=5), "new-eve", "eve@gmail.com", timedelta(hours=30)),
    ])
    second = _run(settings)
    run = versions.latest_run(ch, db, kind="curves")
    assert run["metadata"]["incremental"] and run["metadata"]["base"] == base.version
    assert run["metadata"]["changed_people"] == 3 and second["people_written"] == 3  # ann, bob, eve
    assert second["people"] == first["people"] + 1
    _assert_served_equals_frozen(ch, settings, now)

    # ten days on: every open message settles with a run (one new event, itself already settled, triggers it);
    # dee's waited the whole horizon unopened and now counts as such
    clock["t"] = now + timedelta(days=10)
    monkeypatch.setattr(incremental, "FULL_EVERY_HOURS", 10_000)  # stay on the base
    produce_all(settings, _message(now - timedelta(hours=1), "new-fay", "fay@gmail.com", None))
    _run(settings)
    assert ch.command(f"SELECT count() FROM (SELECT message FROM {db}.timing_open_messages GROUP BY message "
                      "HAVING argMax(deleted, version) = 0)") == 0
    assert versions.latest_run(ch, db, kind="curves")["metadata"]["incremental"]
    _assert_served_equals_frozen(ch, settings, clock["t"])

    # a run that died left cells under a version nobody committed: they never count
    dead = versions.next_version(ch, db)
    ch.insert(f"{db}.timing_cells", [[base.version, dead, str(load_snapshot(ch, db).universal_id[0]), 5, 50.0,
                                      50.0, 50.0]],
              column_names=["base", "version", "universal_id", "cell", "messages", "events", "fresh"])
    produce_all(settings, _message(now - timedelta(hours=1), "new-gil", "gil@gmail.com", None))
    _run(settings)
    _assert_served_equals_frozen(ch, settings, clock["t"])


def test_identity_merges_move_cells_to_the_survivor(settings: Settings, ch, monkeypatch) -> None:
    db = settings.clickhouse_database
    now = datetime.now(UTC).replace(microsecond=0)
    monkeypatch.setattr(incremental, "now_ms", lambda: int(now.timestamp() * 1000))
    monkeypatch.setattr(incremental, "MAX_NEW_SHARE", 100.0)
    batch = []
    for day in range(20, 30, 2):  # two people so far: kim (email) and a phone nobody has tied to her yet
        batch += _message(now - timedelta(days=day), f"k-{day}", "kim@gmail.com", timedelta(hours=2))
        batch.append(_event("delivered", now - timedelta(days=day, hours=3), f"p-{day}", None, "+14155552671"))
    produce_all(settings, batch)
    _run(settings)
    before = load_snapshot(ch, db)
    assert len(before) == 2
    # an event carrying both ties them: identity merges the two people
    produce_all(settings, [_event("delivered", now - timedelta(hours=2), "both", "kim@gmail.com", "+14155552671")])
    _run(settings)
    assert ch.command(f"SELECT count() FROM {db}.identity_merge_log") >= 1
    run = versions.latest_run(ch, db, kind="curves")
    assert run["metadata"]["incremental"]
    _assert_served_equals_frozen(ch, settings, now)
    survivor = ch.command(f"SELECT new_id FROM {db}.identity_merge_log ORDER BY merged_at DESC LIMIT 1")
    snap = load_snapshot(ch, db)
    row = snap.positions([survivor])[0]
    assert snap.engagements[row] == 5 and snap.curves.shape[1] == HOURS


def test_a_commit_larger_than_a_url_is_written(settings: Settings, ch) -> None:
    """Calibrations, models and reports travel in the request body: as URL parameters a demo-sized model made the
    embedded endpoint answer 414 and `sendflowr up` fail."""
    db = settings.clickhouse_database
    big = "x" * 300_000
    versions.commit(ch, db, 7, "run-big", "curves", 1, big, metadata={"note": big})
    run = versions.latest_run(ch, db)
    assert run["version"] == 7 and run["calibration"] == big and run["metadata"] == {"note": big}


def test_one_timing_writer_at_a_time(settings: Settings, ch) -> None:
    """Two runs that both took next_version before either wrote would share a version: a curves run while another
    timing writer holds the lease is refused and writes nothing, and runs once the lease is released."""
    from sendflowr.lease import LeaseHeld
    from sendflowr.timing.run import materialize as build

    db = settings.clickhouse_database
    start = datetime.now(UTC) - timedelta(days=3)
    produce_all(settings, [m for i in range(4) for m in _message(start + timedelta(hours=i), f"m{i}",
                                                                 "writer@example-mail.com", timedelta(minutes=5))])
    materialize([events, identity_graph], resources={"sendflowr": resource_for(settings)})
    with versions.writer(ch, db, "another-run"):
        with pytest.raises(LeaseHeld, match="timing:versions"):
            build(ch, db, log=lambda _: None)
        assert versions.latest_version(ch, db) is None
        assert int(ch.command(f"SELECT count() FROM {db}.timing_curves")) == 0
    report = build(ch, db, log=lambda _: None)
    assert report.version == versions.latest_version(ch, db) and report.people == 1


def test_a_message_pass_in_slices_reads_the_same_messages(settings: Settings, ch, monkeypatch) -> None:
    """Past SLICE_EVENTS a pass groups the messages in slices (one query each): together they are the same rows."""
    from sendflowr import progress
    from sendflowr.timing import stats

    now = datetime.now(UTC).replace(microsecond=0)
    history = []
    for day in range(1, 15):
        for who, hour in (("ann", 3), ("bob", 20), ("cy", 9)):
            history += _message(now - timedelta(days=day, hours=-hour), f"m-{who}-{day}", f"{who}@gmail.com",
                                timedelta(minutes=40 * day) if day % 3 else None)
    produce_all(settings, history)
    _run(settings)
    db = settings.clickhouse_database
    ends = progress.committed_ends(ch, db)

    def rows() -> np.ndarray:
        m = read_inputs(ch, db, SignalRules(), EstimatorParams(), observed_before=now, ends=ends).messages
        table = np.stack([m.p, m.delivered_hour, m.delivered_second, m.wait, m.engaged]).T.astype(np.int64)
        return table[np.lexsort(table.T[::-1])], m.totals

    whole, whole_totals = rows()
    assert stats.slices_for(ch, db) == 1
    monkeypatch.setattr(stats, "SLICE_EVENTS", 7)
    assert stats.slices_for(ch, db) >= 5
    sliced, sliced_totals = rows()
    assert whole.shape[0] == 42 and whole[:, 4].sum() > 0
    np.testing.assert_array_equal(sliced, whole)
    assert sliced_totals == whole_totals
