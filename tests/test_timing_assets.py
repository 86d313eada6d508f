"""Timing assets end to end on real Kafka and ClickHouse: synthetic world -> ingest -> identity -> curves ->
evaluation, signal cleaning against the world's truth, incremental reruns, hand-made machine signals."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import orjson
import pytest
from dagster import materialize
from dagster_resources import resource_for

from sendflowr.kafka_io import produce_all
from sendflowr.settings import Settings
from sendflowr.synth import WorldConfig, build_world, iter_event_batches, serialize_batch, write_ground_truth
from sendflowr.timing.decide import HOURS
from sendflowr.timing.run import materialize as materialize_timing
from sendflowr.timing.store import load_snapshot
from sendflowr.timing.versions import latest_version
from sendflowr_assets.defs.identity.assets import identity_graph
from sendflowr_assets.defs.ingest.assets import events
from sendflowr_assets.defs.timing.assets import timing_curves, timing_evaluation
from sendflowr_assets.defs.timing.checks import TIMING_CHECKS

pytestmark = pytest.mark.integration



def _world(out: Path) -> tuple[list[bytes], Counter]:
    world = build_world(WorldConfig(people=600, weeks=8, campaigns_per_week=4, seed=21))
    write_ground_truth(world, out)
    lines, truth = [], Counter()
    for batch in iter_event_batches(world):
        lines += serialize_batch(batch)
        unique = ~batch.column("_duplicate").to_numpy(zero_copy_only=False)
        kinds = zip(np.asarray(batch.column("event_type").to_pylist())[unique],
                    np.asarray(batch.column("_origin").to_pylist())[unique], strict=True)
        truth.update(kinds)
    return lines, truth


def test_curves_and_evaluation_on_a_synthetic_world(settings: Settings, ch, tmp_path: Path) -> None:
    db = settings.clickhouse_database
    truth_dir = tmp_path / "world"
    lines, truth = _world(truth_dir)
    produce_all(settings, [(None, line) for line in lines])
    result = materialize(
        [events, identity_graph, timing_curves, timing_evaluation, *TIMING_CHECKS],
        resources={"sendflowr": resource_for(settings)},
        run_config={"ops": {"identity_graph": {"config": {"ground_truth": str(truth_dir / "identifiers.parquet")}},
                            "timing_evaluation": {"config": {"ground_truth": str(truth_dir)}}}})
    assert result.success
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert checks["curves_well_formed"].passed and checks["every_person_has_a_curve"].passed
    # judged against the world's truth, or reported as skipped (a warning): never a silent pass
    for name in ("confidence_calibrated", "no_data_beats_best_single_hour", "heldout_beats_cohort_curves"):
        assert "skipped" not in checks[name].metadata

    meta = result.asset_materializations_for_node("timing_curves")[0].metadata
    # Signal cleaning against the world's truth: machine opens and scanner clicks found almost exactly.
    machine_share = truth[("opened", "apple_mpp")] / (truth[("opened", "apple_mpp")] + truth[("opened", "human")])
    scanner_share = truth[("clicked", "scanner")] / (truth[("clicked", "scanner")] + truth[("clicked", "human")])
    assert meta["machine_open_share"].value == pytest.approx(machine_share, abs=0.01)
    assert meta["scanner_click_share"].value == pytest.approx(scanner_share, abs=0.01)
    people = meta["people"].value
    assert people > 300 and meta["people_written"].value == people

    snap = load_snapshot(ch, db)
    assert snap is not None and len(snap) == people
    assert snap.curves.shape == (people, HOURS) and np.isfinite(snap.curves).all()
    assert set(snap.fallback_level.tolist()) <= {"person", "cohort", "global"}
    assert (snap.best_hour == snap.curves.argmax(axis=1)).all()
    assert snap.global_curve.shape == (HOURS,) and snap.global_curve.max() > 0
    # the evaluation committed a newer version carrying the calibration it fitted from held-out deliveries (no
    # truth involved); the truth only measured its ECE
    ev = result.asset_materializations_for_node("timing_evaluation")[0].metadata
    assert snap.version == ev["calibration_version"].value == meta["version"].value + 1
    assert snap.calibration.fitted and snap.calibration.ece == pytest.approx(ev["truth_ece"].value)
    assert snap.calibration.engagement is not None and ev["heldout_deliveries"].value > 100
    assert "| ours |" in ev["predictive"].value and "| cohort_curve |" in ev["predictive"].value
    for plot in ("truth_curves_plot", "truth_calibration_plot", "reliability_plot"):
        assert "data:image/png;base64," in ev[plot].value
    buckets = ev["truth_buckets"].value
    assert buckets["0"]["decisions"] > 0 and buckets["1-4"]["decisions"] > 0
    overall_share = ev["truth_share_of_oracle"].value
    assert 0 < overall_share <= 1
    # our choices beat a random time in the window (a weak, robust bar for a small world)
    lift = buckets["1-4"]["lift"]["random"]
    assert lift["lift"] > 0 and lift["ci95"][0] > 0

    # Incremental: nothing new -> nothing to do, no new version.
    again = materialize_timing(ch, db)
    assert again.skipped and again.new_events == 0 and again.version == snap.version
    # Identity wrote again (a rerun stamps no node: add one stray identifier) -> a run, but statistics are
    # unchanged, so no curve is rewritten and the snapshot keeps the curves and carries the calibration.
    ch.command(f"INSERT INTO {db}.identity_nodes SELECT 18446744073709551557, 'email', 'stray@nowhere.test', "
               "now64(3), now64(3), 18446744073709551557, "
               "0, 'sf_stray', now64(6)")
    again = materialize_timing(ch, db)
    assert not again.skipped and again.people_written == 0 and not again.full_rewrite
    snap2 = load_snapshot(ch, db)
    assert snap2.version == again.version > snap.version
    np.testing.assert_array_equal(snap2.curves, snap.curves)
    assert snap2.calibration == snap.calibration  # carried forward


def _event(kind: str, at: str, message: str, email: str, **extra) -> tuple[None, bytes]:
    body = {"event_id": uuid.uuid4().hex, "occurred_at": at, "message_id": message, "event_type": kind,
            "identifiers": {"email": email}, "esp": "klaviyo", "campaign_id": "c1", "schema_version": 1, **extra}
    return None, orjson.dumps(body)


def test_machine_opens_and_scanner_clicks_are_removed(settings: Settings, ch) -> None:
    db = settings.clickhouse_database
    apple = {"user_agent": "Mozilla/5.0", "ip": "17.58.1.2"}
    human_ua = {"user_agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/126.0", "ip": "84.1.2.3"}
    msgs = [
        _event("delivered", "2026-11-02T10:00:00.000Z", "m1", "ann.smith@gmail.com"),
        _event("opened", "2026-11-02T10:00:30.000Z", "m1", "ann.smith@gmail.com", **apple),  # MPP prefetch
        _event("opened", "2026-11-02T12:00:00.000Z", "m1", "ann.smith@gmail.com", **apple),  # Ann, through MPP
        _event("delivered", "2026-11-02T10:00:00.000Z", "m2", "bob.jones@acme-corp.com", url=""),
        # the gateway follows all four links seconds after delivery
        *[_event("clicked", f"2026-11-02T10:00:0{5 + i}.000Z", "m2", "bob.jones@acme-corp.com",
                 url=f"https://shop.example.com/{i}", user_agent="Mozilla/5.0 (Windows NT 10.0)", ip="40.94.0.1")
          for i in range(4)],
        _event("clicked", "2026-11-02T15:00:00.000Z", "m2", "bob.jones@acme-corp.com", url="https://shop.example.com/1",
               **human_ua),  # Bob, hours later
        _event("delivered", "2026-11-02T10:00:00.000Z", "m3", "cy.young@outlook.com"),
        _event("opened", "2026-11-02T10:01:00.000Z", "m3", "cy.young@outlook.com", machine_open=True, **apple),
        # the flagged open was the prefetch, so this early Apple-proxy open is the reader's
        _event("opened", "2026-11-02T10:02:00.000Z", "m3", "cy.young@outlook.com", **apple),
        _event("clicked", "2026-11-02T10:20:00.000Z", "m3", "cy.young@outlook.com", url="https://x.example/a",
               user_agent="Mimecast-URL-Protect/1.0", ip="207.211.0.1"),
        _event("delivered", "2026-11-02T10:00:00.000Z", "m4", "dee.lee@yahoo.com"),  # delivered, never engaged
    ]
    produce_all(settings, msgs)
    result = materialize([events, identity_graph, timing_curves], resources={"sendflowr": resource_for(settings)})
    assert result.success
    meta = result.asset_materializations_for_node("timing_curves")[0].metadata
    assert "| opens | 4 | 2 | 2 |" in meta["signal"].value
    assert "| clicks | 6 | 5 | 1 |" in meta["signal"].value
    assert "| deliveries | 4 | | engaged 3 |" in meta["signal"].value
    snap = load_snapshot(ch, db)
    assert latest_version(ch, db) == snap.version and len(snap) == 4
    assert snap.engagements.tolist().count(1) == 3 and snap.engagements.tolist().count(0) == 1
    # the run's private owner map (a Join-engine table) is gone with the run
    assert ch.command(f"SELECT count() FROM system.tables WHERE database = '{db}' "
                      "AND startsWith(name, 'timing_owners_')") == 0


def test_a_late_apple_prefetch_is_a_machine_open_and_the_second_proxy_open_the_reader(settings: Settings,
                                                                                   ch) -> None:
    db = settings.clickhouse_database
    apple = {"user_agent": "Mozilla/5.0", "ip": "17.58.1.2"}
    produce_all(settings, [
        # the prefetch came three hours late (the phone was off): still Apple's, not Ann's
        _event("delivered", "2026-11-02T10:00:00.000Z", "m1", "ann.smith@gmail.com"),
        _event("opened", "2026-11-02T13:00:00.000Z", "m1", "ann.smith@gmail.com", **apple),
        # a late prefetch, then the reader behind the same proxy
        _event("delivered", "2026-11-02T10:00:00.000Z", "m2", "bob.jones@gmail.com"),
        _event("opened", "2026-11-02T11:30:00.000Z", "m2", "bob.jones@gmail.com", **apple),
        _event("opened", "2026-11-02T19:00:00.000Z", "m2", "bob.jones@gmail.com", **apple),
    ])
    result = materialize([events, identity_graph, timing_curves], resources={"sendflowr": resource_for(settings)})
    meta = result.asset_materializations_for_node("timing_curves")[0].metadata
    assert "| opens | 3 | 2 | 1 |" in meta["signal"].value
    assert "| deliveries | 2 | | engaged 1 |" in meta["signal"].value
    snap = load_snapshot(ch, db)
    assert sorted(snap.engagements.tolist()) == [0, 1]


def test_owner_maps_left_by_dead_runs_are_dropped_after_a_day(settings: Settings, ch) -> None:
    db = settings.clickhouse_database
    now = int(time.time())
    for name in (f"timing_owners_{now - 2 * 86_400}_deadbeef0001", f"timing_owners_{now - 60}_cafe00000002"):
        ch.command(f"CREATE TABLE {db}.{name} (k UInt64, p UInt32, universal_id String) "
                   "ENGINE = Join(ANY, LEFT, k) SETTINGS persistent = 0")
    report = materialize_timing(ch, db, log=lambda _line: None)  # no events yet: an empty build
    assert report.people == 0
    left = ch.query(f"SELECT name FROM system.tables WHERE database = '{db}' AND startsWith(name, 'timing_owners_')"
                    ).result_rows
    # the two-day-old one is a dead run's; a minute-old one may belong to a run still going
    assert [row[0] for row in left] == [f"timing_owners_{now - 60}_cafe00000002"]


def test_a_late_event_of_an_old_message_counts_and_rewrites_only_its_person(settings: Settings, ch) -> None:
    db = settings.clickhouse_database
    human = {"user_agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/126.0", "ip": "84.1.2.3"}
    produce_all(settings, [
        _event("delivered", "2026-11-02T10:00:00.000Z", "m1", "ann.smith@gmail.com"),
        _event("delivered", "2026-11-02T10:00:00.000Z", "m2", "bob.jones@acme-corp.com"),
        _event("opened", "2026-11-02T13:00:00.000Z", "m2", "bob.jones@acme-corp.com", **human),
    ])
    resources = {"sendflowr": resource_for(settings)}
    assert materialize([events, identity_graph, timing_curves], resources=resources).success
    first = load_snapshot(ch, db)
    ann = first.universal_id.tolist().index(ch.command(
        f"SELECT n.universal_id FROM {db}.identity_identifiers AS i FINAL INNER JOIN {db}.identity_nodes AS n FINAL "
        "ON i.node_key = n.node_key WHERE i.raw_value = 'ann.smith@gmail.com'"))
    assert first.engagements[ann] == 0 and first.engagements.sum() == 1
    # days later Ann opens m1, the message delivered in the first batch: nothing else arrives
    produce_all(settings, [_event("opened", "2026-11-05T09:00:00.000Z", "m1", "ann.smith@gmail.com", **human)])
    result = materialize([events, identity_graph, timing_curves], resources=resources)
    meta = result.asset_materializations_for_node("timing_curves")[0].metadata
    assert meta["new_events"].value == 1
    second = load_snapshot(ch, db)
    assert second.version > first.version and second.engagements[ann] == 1
    # the global prior moved (one more engaged delivery of two) so every curve may be rewritten; if not,
    # only Ann's changed statistics are
    assert meta["people_written"].value == (2 if meta["full_rewrite"].value else 1)
