"""A full timing build in slices of people (sendflowr.timing.slices) equals a build in one piece on the same
events: the same people, levels, counts, cohorts and base cells; curves, priors, decay and the ML prior's shapes
equal up to the order of floating-point sums."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sendflowr.settings import Settings
from sendflowr.synth import WorldConfig, build_world
from sendflowr.timing import incremental, run, stats, versions
from sendflowr.timing.estimate import EstimatorParams
from sendflowr.timing.run import materialize
from sendflowr.timing.worldload import load_world

pytestmark = pytest.mark.integration

# small enough for cohorts and the ML prior to be learned from a 500-person world
PARAMS = EstimatorParams(min_cohort_people=5, clusters=3, cluster_min_engagements=3)


def _curves(ch, db: str, version: int) -> dict:
    rows = ch.query(f"SELECT universal_id, curve, evidence, engagements, deliveries, fallback_level, cohort, "
                    f"stats_hash FROM {db}.timing_curves WHERE version = {version} ORDER BY universal_id").result_rows
    return {name: [r[i] for r in rows] for i, name in enumerate(
        ("id", "curve", "evidence", "engagements", "deliveries", "level", "cohort", "hash"))}


def _priors(ch, db: str, version: int) -> dict:
    return {cohort: np.asarray(curve) for cohort, curve in ch.query(
        f"SELECT cohort, curve FROM {db}.timing_priors WHERE version = {version}").result_rows}


def _model(ch, db: str, version: int) -> dict:
    return json.loads(ch.query(f"SELECT model FROM {db}.timing_models WHERE version = {version}").result_rows[0][0])


def test_a_build_in_slices_of_people_equals_one_in_one_piece(settings: Settings, ch, tmp_path: Path,
                                                              monkeypatch) -> None:
    db = settings.clickhouse_database
    world = build_world(WorldConfig(people=500, weeks=6, campaigns_per_week=4, seed=5, zone_mix_share=0.3))
    load_world(settings, ch, world, tmp_path / "world", log=lambda _: None)
    one = materialize(ch, db, params=PARAMS, full=True, log=lambda _: None)
    ids = np.asarray(_curves(ch, db, one.version)["id"], dtype=object)
    ca = incremental.read_cells(ch, db, one.version, one.version, ids)  # the next build drops this base

    events = int(ch.command(f"SELECT count() FROM {db}.events"))
    monkeypatch.setattr(stats, "SLICE_EVENTS", events // 3 + 1)  # three slices of the messages, then of people
    lines: list[str] = []
    sliced = materialize(ch, db, params=PARAMS, full=True, log=lines.append)
    assert "timing: a build in 3 slices" in lines
    assert sum(line.startswith("timing: message slice") for line in lines) == 3
    assert versions.latest_run(ch, db, kind="curves")["metadata"]["slices"] == 3

    assert (sliced.people, sliced.people_written, sliced.by_level, sliced.cohorts, sliced.totals) == \
        (one.people, one.people_written, one.by_level, one.cohorts, one.totals)
    assert one.cohorts >= 2 and one.by_level["cohort"] > 0  # the comparison covers learned cohorts

    a, b = _curves(ch, db, one.version), _curves(ch, db, sliced.version)
    assert len(a["id"]) == one.people > 400
    for column in ("id", "evidence", "engagements", "deliveries", "level", "cohort", "hash"):
        assert a[column] == b[column], column
    np.testing.assert_allclose(np.asarray(b["curve"]), np.asarray(a["curve"]), rtol=1e-4, atol=1e-6)

    pa_, pb = _priors(ch, db, one.version), _priors(ch, db, sliced.version)
    assert pa_.keys() == pb.keys() and len(pa_) == one.cohorts + 1
    for cohort in pa_:
        np.testing.assert_allclose(pb[cohort], pa_[cohort], rtol=1e-4, atol=1e-6)
    ma, mb = _model(ch, db, one.version), _model(ch, db, sliced.version)
    np.testing.assert_allclose(mb["g"], ma["g"], rtol=1e-4)
    assert ma["clusters"] is not None  # the ML prior was learned, from cells read back in the sliced build
    np.testing.assert_allclose(mb["clusters"]["shapes"], ma["clusters"]["shapes"], rtol=1e-3, atol=1e-5)

    # the base an incremental run adds to: the same summed cells (written per slice of messages, summed on read)
    cb = incremental.read_cells(ch, db, sliced.version, sliced.version, ids)
    assert ca.num_rows == cb.num_rows > len(ids)
    for column in ("universal_id", "cell", "messages", "events"):
        assert ca.column(column).to_pylist() == cb.column(column).to_pylist(), column
    np.testing.assert_allclose(cb.column("fresh").to_numpy(), ca.column("fresh").to_numpy(), rtol=1e-5, atol=1e-6)

    # a scheduled full build (not asked for) over the same events, in slices: each slice compares its people's
    # fingerprints with the committed ones and rewrites nobody
    monkeypatch.setattr(run, "identity_mark", lambda client, database: ["moved"])
    monkeypatch.setattr(incremental, "needs_full", lambda *args: "a test")
    again = materialize(ch, db, params=PARAMS, log=lambda _: None)
    assert not again.full_rewrite and again.people == one.people and again.people_written == 0
