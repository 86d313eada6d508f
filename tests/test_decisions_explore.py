"""Exploration (sendflowr/decisions/explore.py) on its own and inside the decision service: draws deterministic per
(universal_id, campaign_id) and the same bits alone or in a batch, wider where evidence is thin, explored moments
that keep the window and the trigger rules, the policy in the decision log's records, and off by default. Single,
batch, coalesced and retried exploring decisions agree: tests/test_decisions_arms.py (exploring)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import numpy as np
import orjson
import pytest
from reference import decide
from scipy import stats
from test_api_service import synthetic_snapshot

from sendflowr.decisions import arms, explore, records
from sendflowr.decisions.identity_map import NormalizeCache
from sendflowr.decisions.service import (
    DecisionRequest,
    DecisionResult,
    decide_batch,
    decide_requests,
)
from sendflowr.decisions.snapshot import DecisionSnapshot, SnapshotHolder
from sendflowr.settings import Settings
from sendflowr.timing.decide import HOUR_MS, HOURS, DecisionError, hour_of_week_ms
from sendflowr_api.app import create_app
from sendflowr_api.coalesce import Coalescer

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
IDS = ("email", "klaviyo_id", "phone", "external_id")


def ms(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(milliseconds=1)


def uids(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 2**64 - 1, n, dtype=np.uint64)


def shape_spread(drawn: np.ndarray, curves: np.ndarray) -> np.ndarray:
    """Per row: the standard deviation over hours of log(drawn / curve) with its weekly mean removed."""
    logs = np.log(drawn.astype(np.float64) / curves)
    return (logs - logs.mean(axis=1, keepdims=True)).std(axis=1)


@pytest.fixture(scope="module")
def snapshot() -> DecisionSnapshot:
    return synthetic_snapshot(60, seed=5, without_curve=10, version=1)


def _requests(n: int, now: datetime, campaign: str | None, seed: int = 7) -> list[DecisionRequest]:
    """Windows before and after now, from 20 minutes to a week; latencies 0, 5 min, 1 h; known people, unknown ones
    (a cohort or the global curve) and people without a curve yet."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        after = now + timedelta(minutes=int(rng.integers(-300, 3000)))
        ids = dict.fromkeys(IDS)
        ids["klaviyo_id" if i % 3 else "email"] = f"K{i % 60}" if i % 3 else f"new{i}@corp.io"
        out.append(DecisionRequest(ids, None, after, after + timedelta(hours=float(rng.choice([0.3, 5, 30, 170]))),
                                   float(rng.choice([0, 300, 3600])), campaign, f"m{i}"))
    return out


def test_exploration_is_off_by_default(snapshot) -> None:
    assert Settings.model_fields["api_exploration"].default == 0.0
    def coalescer(settings: Settings) -> Coalescer:  # the API hands the setting to its decisions
        holder = SnapshotHolder(lambda: None, settings.clickhouse_database, 3600)
        return create_app(settings, holder=holder, refresher=False).state.coalescer

    assert coalescer(Settings()).exploration == 0.0 and coalescer(Settings(api_exploration=0.5)).exploration == 0.5
    now = datetime.now(UTC)
    reqs = _requests(200, now, "spring")
    results = [r for r in decide_requests(snapshot, NormalizeCache(), reqs, now) if isinstance(r, DecisionResult)]
    assert len(results) > 150
    assert all(r.policy == explore.GREEDY and r.delivery_at == r.model_delivery_at for r in results)
    after, before = now + timedelta(hours=1), now + timedelta(days=7)
    batch = decide_batch(snapshot, NormalizeCache(), {"klaviyo_id": [f"K{i}" for i in range(60)]}, [None] * 60, after,
                         before, 0.0, now, 0.0, "spring")
    assert not batch.explored.any() and (batch.delivery_at == batch.model_delivery_at).all()
    with pytest.raises(ValueError):
        Settings(api_exploration=-0.1)


def test_draws_are_deterministic_standard_normal_and_independent_of_the_arm() -> None:
    ids, spring = uids(50_000), arms.campaign_key("spring")
    z = explore.normals(ids, spring)
    assert z.shape == (len(ids), explore.MODES.shape[0])
    assert (explore.normals(ids, spring) == z).all()  # a retry draws the same
    assert (np.round(z * 64) == z * 64).all()  # quantized to 1/64 (exact sums)
    jitter = np.random.default_rng(0).uniform(-1 / 128, 1 / 128, len(ids))  # undoes the grid for the test
    for column in (0, 5, z.shape[1] - 1):
        assert stats.kstest(z[:, column] + jitter, "norm").pvalue > 1e-4
    assert np.abs(np.corrcoef(z[:, :6].T) - np.eye(6)).max() < 0.03
    other = explore.normals(ids, arms.campaign_key("summer"))  # another campaign draws again, independently
    assert abs(np.corrcoef(z[:, 0], other[:, 0])[0, 1]) < 0.03
    in_control = arms.in_control_many(arms.arm_hashes(ids, spring), 0.5)
    assert abs(z[in_control, 0].mean()) < 0.03 and abs(z[~in_control, 0].mean()) < 0.03
    # the noise field: unit variance at every hour, smooth (neighbouring hours move together)
    field = z @ explore.MODES
    assert np.allclose(field.var(axis=0), 1.0, atol=0.05)
    assert np.corrcoef(field[:, 10], field[:, 11])[0, 1] > 0.9
    assert abs(np.corrcoef(field[:, 10], field[:, 10 + 84])[0, 1]) < 0.4


def test_a_row_alone_and_in_a_batch_draws_the_same_bits() -> None:
    rng = np.random.default_rng(3)
    n = 3000
    curves = rng.gamma(2.0, 0.05, (n, HOURS)).astype(np.float32)
    evidence = rng.gamma(1.0, 8.0, n)
    ids, keys = uids(n, 4), np.array([arms.campaign_key(f"c{i % 7}") for i in range(n)], np.uint64)
    full = explore.drawn_curves(curves, evidence, ids, keys, 1.0)
    assert full.dtype == np.float32 and np.isfinite(full).all() and (full > 0).all()
    for lo, hi in [(i, i + 1) for i in range(0, n, 97)] + [(5, 12), (100, 433), (2000, 3000)]:
        part = explore.drawn_curves(curves[lo:hi], evidence[lo:hi], ids[lo:hi], keys[lo:hi], 1.0)
        assert np.array_equal(part.view(np.uint32), full[lo:hi].view(np.uint32))
    one = explore.drawn_curves(curves[:1], evidence[:1], ids[:1], int(keys[0]), 1.0)  # a scalar campaign key
    assert np.array_equal(one, full[:1])


def test_draws_are_wider_where_evidence_is_thin() -> None:
    rng = np.random.default_rng(4)
    n = 20_000
    curves = rng.gamma(4.0, 0.05, (n, HOURS)).astype(np.float32)
    ids = uids(n, 5)
    widths = explore.sigma(np.array([0.0, 1.0, 5.0, 17.8, 50.0, 500.0]))
    assert (np.diff(widths) < 0).all() and widths[0] == explore.SIGMA_KNOTS[0] and widths[-1] < 0.05
    spreads = []
    for evidence in (0.0, 5.0, 50.0):
        for scale in (1.0, 0.5):
            drawn = explore.drawn_curves(curves, np.full(n, evidence), ids, 9, scale)
            # the modes carry the noise's shape (no level); its spread over hours is the calibrated width
            spread = np.sqrt(np.mean(np.square(shape_spread(drawn, curves))))
            expected = scale * explore.sigma(np.array([evidence]))[0]
            assert abs(spread / expected - 1) < 0.1, (evidence, scale, spread, expected)
            spreads.append(spread)
    assert spreads[0] > spreads[2] > spreads[4]
    # so the best hour of a draw leaves the curve's best more often for people with less evidence
    peak = np.argmax(curves, axis=1)
    left = [float((np.argmax(explore.drawn_curves(curves, np.full(n, e), ids, 9, 1.0), axis=1) != peak).mean())
            for e in (0.0, 5.0, 50.0)]
    assert left[0] > left[1] > left[2] > 0


def test_the_service_explores_more_for_people_with_less_evidence() -> None:
    """Two halves of a list with the same curves, one with no evidence and one with plenty: the thin half is served
    another moment than the curve's best far more often."""
    base = synthetic_snapshot(2000, seed=8, without_curve=0, version=1)
    t = base.timing
    evidence = np.where(np.arange(len(t)) % 2 == 0, 0.0, 60.0).astype(np.float32)
    snap = DecisionSnapshot(identity=base.identity, timing=dataclasses.replace(t, evidence=evidence))
    now = datetime.now(UTC)
    after, before = now + timedelta(hours=1), now + timedelta(days=7)
    batch = decide_batch(snap, NormalizeCache(), {"klaviyo_id": [f"K{i}" for i in range(2000)]}, [None] * 2000,
                         after, before, 0.0, now, 0.0, "spring", exploration=1.0)
    assert batch.explored.all() and all(f is None for f in batch.error_field)
    away = batch.delivery_at != batch.model_delivery_at
    thin = batch.evidence == 0.0
    assert thin.sum() == 1000 and away[thin].mean() > 2 * away[~thin].mean() > 0
    less = decide_batch(snap, NormalizeCache(), {"klaviyo_id": [f"K{i}" for i in range(2000)]}, [None] * 2000,
                        after, before, 0.0, now, 0.0, "spring", exploration=0.3)
    assert (less.delivery_at != less.model_delivery_at).mean() < away.mean()  # a smaller scale explores less


def test_explored_moments_keep_the_window_and_the_trigger_rules(snapshot) -> None:
    now = datetime.now(UTC)
    floor_now = EPOCH + timedelta(milliseconds=ms(now))  # decisions work in whole milliseconds
    reqs = _requests(600, now, "cmp-1")
    greedy = decide_requests(snapshot, NormalizeCache(), reqs, now, control_share=0.3)
    explored = decide_requests(snapshot, NormalizeCache(), reqs, now, control_share=0.3, exploration=1.0)
    counts = {explore.GREEDY: 0, explore.THOMPSON: 0, explore.RANDOM: 0}
    moved = 0
    for q, g, r in zip(reqs, greedy, explored, strict=True):
        if not isinstance(r, DecisionResult):  # the same requests fail, for the same field
            assert isinstance(g, type(r)) and getattr(g, "field", None) == getattr(r, "field", None)
            continue
        counts[r.policy] += 1
        assert (r.arm, r.model_delivery_at, r.confidence, r.fallback_level) == (
            g.arm, g.model_delivery_at, g.confidence, g.fallback_level)
        if r.arm == arms.CONTROL:  # the control arm is untouched: the same uniform moment
            assert r.policy == explore.RANDOM and (r.delivery_at, r.trigger_at) == (g.delivery_at, g.trigger_at)
            continue
        assert r.policy == explore.THOMPSON
        # inside the window, trigger never before now, the latency kept
        assert ms(q.send_after) <= ms(r.delivery_at) < ms(q.send_before) and r.trigger_at >= floor_now
        assert r.delivery_at - r.trigger_at == g.delivery_at - g.trigger_at
        # one of the rule's candidates: the earliest usable moment or an hour boundary after it
        first = max(ms(q.send_after), ms(now) + ms(g.delivery_at) - ms(g.trigger_at))
        assert ms(r.delivery_at) == first or (ms(r.delivery_at) % HOUR_MS == 0 and ms(r.delivery_at) > first)
        # exactly the decision rule on this person's draw
        uid = int(r.universal_id[3:], 16)
        row = snapshot.timing_row(uid)
        curve = snapshot.timing.curves[row] if row is not None else None
        if curve is None:
            continue
        drawn = explore.drawn_curves(curve[None], np.array([r.evidence]), np.array([uid], np.uint64),
                                     arms.campaign_key("cmp-1"), 1.0)[0]
        rule = decide(drawn, evidence=r.evidence, fallback_level=r.fallback_level, send_after=q.send_after,
                      send_before=q.send_before, latency_seconds=q.latency_seconds, now=now,
                      calibration=snapshot.timing.calibration)
        assert rule.delivery_at == r.delivery_at
        # its expected engagement is the curve's at the moment served
        assert r.expected_engagement == pytest.approx(float(curve[hour_of_week_ms(np.array([ms(r.delivery_at)]))[0]]))
        assert "explored" in r.explanation
        moved += r.delivery_at != g.delivery_at
    assert counts[explore.GREEDY] == 0 and counts[explore.THOMPSON] > 200 and counts[explore.RANDOM] > 100
    assert moved > 20  # (short windows and spiky synthetic curves leave many draws on the same best hour)


def test_a_decision_error_is_the_same_with_exploration(snapshot) -> None:
    now = datetime.now(UTC)
    ids = {**dict.fromkeys(IDS), "klaviyo_id": "K1"}
    bad = [DecisionRequest(ids, None, now - timedelta(days=2), now - timedelta(days=1), 0.0, "c"),  # past window
           DecisionRequest(ids, None, now, now + timedelta(minutes=10), 3600.0, "c")]  # latency beyond the window
    for plain, explored in zip(decide_requests(snapshot, NormalizeCache(), bad, now),
                               decide_requests(snapshot, NormalizeCache(), bad, now, 0.0, 1.0), strict=True):
        assert isinstance(plain, DecisionError) and isinstance(explored, DecisionError)
        assert (plain.field, str(plain)) == (explored.field, str(explored))


def test_records_name_the_policy_and_the_scale(snapshot) -> None:
    now = datetime.now(UTC)
    reqs = _requests(90, now, "spring")
    results = decide_requests(snapshot, NormalizeCache(), reqs, now, 0.3, 0.7)
    pairs = [(q, r) for q, r in zip(reqs, results, strict=True) if isinstance(r, DecisionResult)]
    columns = records.singles(0, "v", 0.3, [q for q, _ in pairs], [r for _, r in pairs], 0.7)
    assert columns["policy"] == [r.policy for _, r in pairs] and set(columns["policy"]) == {"thompson", "random"}
    assert columns["exploration"] == [0.7] * len(pairs)
    after, before = now + timedelta(hours=1), now + timedelta(days=7)
    batch = decide_batch(snapshot, NormalizeCache(), {"klaviyo_id": [f"K{i}" for i in range(60)] + [None]},
                         [None] * 61, after, before, 0.0, now, 0.3, "spring", exploration=0.7)
    columns = records.batch(0, "v", 0.3, "spring", [None] * 61, ms(after), ms(before), 0.0, batch, 0.7)
    expected = np.where(batch.control, "random", np.where(batch.explored, "thompson", "greedy"))[:60].tolist()
    assert columns["policy"] == expected and set(expected) == {"thompson", "random"}
    message = orjson.loads(records.encode(columns)[0][1])
    assert message["columns"]["policy"] == expected and message["columns"]["exploration"] == [0.7] * 60
    greedy = decide_batch(snapshot, NormalizeCache(), {"klaviyo_id": ["K1", "K2"]}, [None] * 2, after, before, 0.0,
                          now)
    assert records.batch(0, "v", 0.0, None, [None] * 2, ms(after), ms(before), 0.0, greedy)["policy"] == ["greedy"] * 2
