"""The API's snapshot parts against the real engine: the compact timing part holds what store.load_snapshot reads
(curves within the quantization's half step, everything else equal), a delta part built on an older one equals a
full build, a part of a database made again under the same name is never a base, and two workers (holders on one
directory) build each part once, serve identical decisions, and leave no part behind that none of them uses."""

from __future__ import annotations

import gc
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from api_world import commit, peaked_curve, standard_world, write_curves, write_prior
from test_timing_store import db as ts_db  # noqa: F401 (a fixture)

from sendflowr.clickhouse import get_client
from sendflowr.decisions.identity_map import NormalizeCache
from sendflowr.decisions.service import DecisionRequest, decide_requests
from sendflowr.decisions.snapshot import DecisionSnapshot, SnapshotHolder
from sendflowr.decisions.snapshot_store import PartStore
from sendflowr.decisions.timing_part import LEVELS, timing_from_part, write_timing
from sendflowr.identity import graph
from sendflowr.migrations import apply_migrations
from sendflowr.settings import Settings
from sendflowr.timing import store
from sendflowr.timing.decide import HOURS

pytestmark = pytest.mark.integration


@pytest.fixture
def db(base_settings: Settings, request) -> tuple[Settings, object]:
    """test_timing_store's fresh migrated database, with its settings."""
    client, database = request.getfixturevalue("ts_db")
    return base_settings.model_copy(update={"clickhouse_database": database}), client


def ids(n: int, seed: int) -> list[str]:
    return sorted(set(graph.format_uid(np.random.default_rng(seed).integers(1, 2**63, n).astype(np.uint64))))


def realistic_curves(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    hours = np.arange(HOURS)
    peaks = rng.integers(0, HOURS, n)
    base = 0.02 + 0.3 * np.exp(-0.5 * ((hours[None, :] - peaks[:, None]) / rng.uniform(2, 30, n)[:, None]) ** 2)
    return (base * rng.uniform(0.5, 1.5, (n, HOURS)) ** 0.1).astype(np.float32)


def build(parts: PartStore, client, database: str, name: str, base=None):
    run = store.latest_run(client, database)
    return parts.get(name, lambda out: write_timing(client, database, run, out, base))


def assert_same_timing(compact, exact) -> None:
    """A compact timing snapshot against the float32 one store.load_snapshot reads."""
    assert graph.format_uid(compact.uid).tolist() == list(exact.universal_id)
    curves = np.asarray(compact.curves)
    peak = np.asarray(exact.curves).max(axis=1)
    finite = np.isfinite(exact.curves).all(axis=1) & (exact.curves >= 0).all(axis=1)
    # half a step, and float32 rounding of the product (a few units in the last place of the peak)
    error = np.abs(curves[finite] - exact.curves[finite]) / np.maximum(peak[finite, None], 1e-30)
    assert error.max() <= 0.5 / LEVELS + 4 * np.finfo(np.float32).eps
    assert np.isnan(curves[~finite]).all()
    for row in range(len(exact.universal_id)):  # a row read alone is the row read in a batch
        np.testing.assert_array_equal(compact.curves[row], curves[row])
    for name in ("evidence", "engagements", "best_hour"):
        np.testing.assert_array_equal(np.asarray(getattr(compact, name)), getattr(exact, name))
    assert list(compact.fallback_level) == list(exact.fallback_level)
    assert list(compact.cohort) == list(exact.cohort)
    assert compact.priors.keys() == exact.priors.keys()
    for cohort, curve in exact.priors.items():
        np.testing.assert_array_equal(compact.priors[cohort], curve)
    np.testing.assert_array_equal(compact.global_curve, exact.global_curve)
    assert (compact.version, compact.materialized_at, compact.calibration) == (
        exact.version, exact.materialized_at, exact.calibration)
    assert compact.universal_id[3] == exact.universal_id[3] and len(compact) == len(exact.universal_id)
    assert compact.positions([exact.universal_id[5], "sf_0000000000000000"]).tolist() == [5, -1]


def test_compact_timing_holds_what_the_store_reads(db, tmp_path) -> None:
    settings, client = db
    database = settings.clickhouse_database
    people = ids(3000, 1)
    curves = realistic_curves(len(people), 2)
    curves[0] = 0.0  # no engagement anywhere: all zeros
    curves[1, 7] = np.inf  # values the decision rule refuses
    curves[2, 9] = -0.1
    curves[3, 11] = np.nan
    write_curves(client, database, 1, people[:2000], curves[:2000], level="cohort", cohort="email:a.com")
    write_curves(client, database, 1, people[2000:], curves[2000:], cohort="phone:+44")
    write_prior(client, database, 1, "global", "", 30)
    write_prior(client, database, 1, "cohort", "email:a.com", 60)
    commit(client, database, 1, len(people))
    newer = realistic_curves(500, 3)
    write_curves(client, database, 2, people[1000:1500], newer, level="person")  # newest row wins
    commit(client, database, 2, 500)
    write_curves(client, database, 3, people[:100], newer[:100] * 0)  # not committed: invisible
    part = build(PartStore(tmp_path), client, database, "t")
    compact = timing_from_part(part)
    assert_same_timing(compact, store.load_snapshot(client, database))
    assert np.asarray(compact.curves)[0].max() == 0 and part["codes"].dtype == np.uint16
    assert compact.fallback_level[1200] == "person" and compact.fallback_level[0] == "cohort"


def test_a_delta_on_an_older_part_equals_a_full_build(db, tmp_path) -> None:
    settings, client = db
    database = settings.clickhouse_database
    people = ids(4000, 4)
    write_curves(client, database, 1, people[:3000], realistic_curves(3000, 5), cohort="email:a.com")
    write_prior(client, database, 1, "global", "", 30)
    commit(client, database, 1, 3000)
    parts = PartStore(tmp_path / "store")
    first = build(parts, client, database, "v1")
    rng = np.random.default_rng(6)
    changed = sorted(set(rng.choice(people[:3000], 400, replace=False).tolist()) | set(people[3000:3300]))
    write_curves(client, database, 2, changed, realistic_curves(len(changed), 7), level="cohort", cohort="email:b.com")
    write_prior(client, database, 2, "cohort", "email:b.com", 80)
    commit(client, database, 2, len(changed))
    delta = build(parts, client, database, "v2-delta", base=first)
    full = build(PartStore(tmp_path / "other"), client, database, "v2-full")
    assert delta.meta["base"] == "v1" and full.meta["base"] is None
    for name in ("uid", "codes", "scale", "evidence", "engagements", "best_hour"):
        np.testing.assert_array_equal(delta[name], full[name])
    a, b = timing_from_part(delta), timing_from_part(full)
    assert list(a.cohort) == list(b.cohort) and list(a.fallback_level) == list(b.fallback_level)
    assert_same_timing(a, store.load_snapshot(client, database))
    # a third version with nothing new for the people: the delta is empty, the part a copy with new priors
    write_prior(client, database, 3, "global", "", 90)
    commit(client, database, 3, 0)
    third = build(parts, client, database, "v3", base=delta)
    assert third.meta["base"] == "v2-delta"
    np.testing.assert_array_equal(third["codes"], full["codes"])
    assert int(np.argmax(timing_from_part(third).global_curve)) == 90


def test_a_base_from_another_incarnation_of_the_database_is_not_used(db, tmp_path) -> None:
    settings, client = db
    database = settings.clickhouse_database
    people = ids(50, 8)
    write_curves(client, database, 1, people, realistic_curves(50, 9))
    commit(client, database, 1, 50)
    parts = PartStore(tmp_path)
    old = build(parts, client, database, "old")
    client.command(f"DROP DATABASE {database}")  # made again under the same name, with other people
    apply_migrations(settings)
    for version in (1, 2):
        write_curves(client, database, version, people[:10], realistic_curves(10, 10 + version))
        commit(client, database, version, 10)
    fresh = build(parts, client, database, "fresh", base=old)
    assert fresh.meta["base"] is None and len(fresh["uid"]) == 10


def _decisions(snapshot: DecisionSnapshot, people) -> list:
    """What the API answers (confidence as it shows it, to 2 decimals)."""
    start = (datetime.now(UTC) + timedelta(days=2)).replace(hour=0, minute=0, second=0, microsecond=0)
    requests = [DecisionRequest({"email": p.identifiers.get("email"), "klaviyo_id": p.identifiers.get("klaviyo_id")},
                                None, start, start + timedelta(days=7), 300.0) for p in people.values()]
    return [(r.universal_id, r.delivery_at, round(r.confidence, 2), r.fallback_level, r.known_person)
            for r in decide_requests(snapshot, NormalizeCache(), requests * 3, datetime.now(UTC))]


def test_two_workers_share_each_part_and_leave_none_unused(db, tmp_path) -> None:
    settings, client = db
    database = settings.clickhouse_database
    people = standard_world(client, database)
    workers = [SnapshotHolder(lambda: get_client(settings), database, 3600, tmp_path) for _ in range(2)]
    assert all(w.refresh_safely() for w in workers)
    first, second = (w.current for w in workers)
    assert [p.built for p in first.parts] == [True, True] and [p.built for p in second.parts] == [False, False]
    assert first.version == second.version
    assert _decisions(first, people) == _decisions(second, people)
    # the float32 snapshot decides the same (peaked curves: no near ties for the quantization to turn)
    exact = DecisionSnapshot(identity=first.identity, timing=store.load_snapshot(client, database),
                             identity_stamp=first.identity_stamp)
    assert _decisions(exact, people) == _decisions(first, people)
    assert exact.version == first.version

    # a new timing version: both swap to a part built once, the old one goes once neither serves it any more; the
    # identity part is kept (identity did not change)
    write_curves(client, database, 3, [people["kim"].universal_id], peaked_curve(20)[None, :])
    commit(client, database, 3, 1)
    assert all(w.refresh_safely() for w in workers)
    timing, identity = workers[0].current.parts
    assert timing.built and timing.name != first.parts[0].name and identity is first.parts[1]
    assert workers[1].current.parts[0].built is False
    old_timing = first.parts[0].name
    del first, second, exact
    gc.collect()
    for w in workers:
        w.refresh_safely()  # nothing new: only prunes
    names = workers[0].parts.parts("")
    assert old_timing not in names and sorted(names) == sorted(p.name for p in workers[0].current.parts)
    kim = [r for r in _decisions(workers[1].current, people) if r[0] == people["kim"].universal_id][0]
    assert kim[1].astimezone(UTC).weekday() * 24 + kim[1].astimezone(UTC).hour == 20
    for w in workers:
        w.stop()


def test_a_failed_load_keeps_the_snapshot_and_builds_nothing(db, tmp_path) -> None:
    settings, client = db
    database = settings.clickhouse_database
    standard_world(client, database)
    holder = SnapshotHolder(lambda: get_client(settings), database, 3600, tmp_path)
    assert holder.refresh_safely()
    serving = holder.current
    write_curves(client, database, 3, ["not-a-universal-id"], peaked_curve(1)[None, :])  # a row the API refuses
    commit(client, database, 3, 1)
    assert not holder.refresh_safely()
    assert holder.current is serving and holder.failures == 1 and "universal ids" in holder.last_error
    assert not [p for p in (tmp_path / database).iterdir() if p.name.startswith(".tmp-")]
    holder.stop()
