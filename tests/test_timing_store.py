"""Reading committed timing state from the real ClickHouse engine: versions, commit marker, cohorts."""

from __future__ import annotations

import uuid

import numpy as np
import pyarrow as pa
import pytest

from sendflowr.clickhouse import get_client
from sendflowr.migrations import apply_migrations
from sendflowr.settings import Settings
from sendflowr.timing.decide import HOURS, Calibration
from sendflowr.timing.store import cohort_for_identifiers, load_snapshot, phone_cohort
from sendflowr.timing.versions import latest_version

pytestmark = pytest.mark.integration


@pytest.fixture
def db(base_settings: Settings, clickhouse: Settings):
    fresh = base_settings.model_copy(update={"clickhouse_database": f"ts_{uuid.uuid4().hex[:10]}"})
    apply_migrations(fresh)
    client = get_client(fresh)
    yield client, fresh.clickhouse_database
    client.close()


def _curves(client, database: str, version: int, ids: list[str], curves: np.ndarray, level: str = "person",
            cohort: str = "") -> None:
    n = len(ids)
    offsets = pa.array(np.arange(n + 1, dtype=np.int32) * HOURS)
    client.insert_arrow(f"{database}.timing_curves", pa.table({
        "universal_id": pa.array(ids, pa.string()), "version": pa.array([version] * n, pa.uint64()),
        "curve": pa.ListArray.from_arrays(offsets, pa.array(curves.astype(np.float32).ravel())),
        "evidence": pa.array(np.arange(n, dtype=np.float32)), "engagements": pa.array(np.arange(n), pa.uint32()),
        "deliveries": pa.array(np.full(n, 9), pa.uint32()), "fallback_level": pa.array([level] * n, pa.string()),
        "cohort": pa.array([cohort] * n, pa.string()),
        "best_hour": pa.array(curves.argmax(axis=1), pa.uint8()), "stats_hash": pa.array(np.zeros(n), pa.uint64()),
    }))


def _prior(client, database: str, version: int, level: str, cohort: str, peak: int) -> None:
    curve = np.full(HOURS, 0.01, dtype=np.float32)
    curve[peak] = 0.5
    client.insert_arrow(f"{database}.timing_priors", pa.table({
        "level": [level], "cohort": [cohort], "version": pa.array([version], pa.uint64()),
        "curve": pa.array([curve.tolist()], pa.list_(pa.float32())), "evidence": pa.array([100.0], pa.float32()),
        "people": pa.array([10], pa.uint64())}))


def _commit(client, database: str, version: int, calibration: Calibration, people: int) -> None:
    client.command(f"INSERT INTO {database}.timing_runs (version, run_id, materialized_at, people, calibration) "
                   "VALUES ({v:UInt64}, {r:String}, now64(3), {p:UInt64}, {c:String})",
                   parameters={"v": version, "r": f"run-{version}", "p": people, "c": calibration.to_json()})


def test_snapshot_reads_only_committed_versions_newest_row_per_person(db) -> None:
    client, database = db
    assert latest_version(client, database) is None
    assert load_snapshot(client, database) is None
    rng = np.random.default_rng(1)
    first = rng.random((3, HOURS)).astype(np.float32)
    _curves(client, database, 1, ["u3", "u1", "u2"], first)
    _prior(client, database, 1, "global", "", 7)
    _prior(client, database, 1, "cohort", "phone:+44", 20)
    cal = Calibration(knots={"person": ((0.0, 1.0), (0.2, 0.8))}, fitted=True, ece=0.02, samples=10)
    _commit(client, database, 1, cal, 3)

    # version 2 rewrote u1 and added u4 and committed; version 3 is still running (no timing_runs row)
    second = rng.random((2, HOURS)).astype(np.float32)
    _curves(client, database, 2, ["u1", "u4"], second, level="cohort", cohort="phone:+44")
    _commit(client, database, 2, cal, 4)
    _curves(client, database, 3, ["u2", "u9"], rng.random((2, HOURS)).astype(np.float32))
    _prior(client, database, 3, "global", "", 99)

    assert latest_version(client, database) == 2
    snap = load_snapshot(client, database)
    assert snap is not None and snap.version == 2 and snap.materialized_at.tzinfo is not None
    assert snap.universal_id.tolist() == ["u1", "u2", "u3", "u4"]
    assert snap.curves.shape == (4, HOURS) and snap.curves.dtype == np.float32
    np.testing.assert_array_equal(snap.curves[0], second[0])  # u1 from version 2
    np.testing.assert_array_equal(snap.curves[1], first[2])  # u2 from version 1, not the uncommitted 3
    np.testing.assert_array_equal(snap.curves[2], first[0])
    assert snap.fallback_level.tolist() == ["cohort", "person", "person", "cohort"]
    assert snap.cohort[0] == "phone:+44"
    assert snap.best_hour.tolist() == [int(second[0].argmax()), int(first[2].argmax()), int(first[0].argmax()),
                                       int(second[1].argmax())]
    assert int(snap.global_curve.argmax()) == 7  # the version-3 global prior is not committed
    assert set(snap.priors) == {"phone:+44"} and int(snap.priors["phone:+44"].argmax()) == 20
    assert snap.calibration == cal
    assert snap.positions(["u4", "nope", "u1"]).tolist() == [3, -1, 0]


def test_cohort_for_unknown_people_from_phone_country_then_email_domain(db) -> None:
    client, database = db
    _prior(client, database, 1, "global", "", 7)
    _prior(client, database, 1, "cohort", "phone:+44", 20)
    _prior(client, database, 1, "cohort", "email:example.org", 30)
    _commit(client, database, 1, Calibration.default(), 0)
    snap = load_snapshot(client, database)
    assert phone_cohort("+442079460958") == "phone:+44"
    assert phone_cohort("+12025550123") == "phone:+1"
    assert cohort_for_identifiers(snap, None, "+44 20 7946 0958") == "phone:+44"
    assert cohort_for_identifiers(snap, "Someone@Example.org", "+44 20 7946 0958") == "phone:+44"
    assert cohort_for_identifiers(snap, "Someone@Example.org", "+33 1 42 68 53 00") == "email:example.org"
    assert cohort_for_identifiers(snap, "a@elsewhere.com", "not a phone") is None
    assert cohort_for_identifiers(snap, None, None) is None
